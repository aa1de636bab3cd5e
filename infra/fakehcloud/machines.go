package fakehcloud

// Machines runs what stands behind the emulated servers: their disks and, while
// a server is booted into rescue, the rescue system reachable over SSH. The
// cloud calls it on every power transition; the guest side reports its own
// power requests back through Cloud.GuestPower.
type Machines interface {
	// Create allocates the disk of a new server and returns the public IPv4
	// address (a loopback address) the server is reached at. The cloud calls
	// it with its state locked, so it must not call back into the Cloud; the
	// other methods are called without that lock.
	Create(id int64, diskBytes int64) (ipv4 string, err error)
	// Boot powers the server on. With rescue non-nil it boots the rescue
	// system, which accepts root logins with rescue.AuthorizedKeys on
	// ipv4:22 after the configured boot delay; otherwise it boots from disk
	// (nothing listens).
	Boot(id int64, rescue *Rescue) error
	// Halt powers the server off at once, dropping SSH sessions.
	Halt(id int64) error
	// DiskDigest returns disk.FileDigest of the server's disk.
	DiskDigest(id int64) (string, error)
	// Delete halts the server and releases its disk and address.
	Delete(id int64) error
}

// Rescue describes a rescue boot.
type Rescue struct {
	// AuthorizedKeys are public keys in authorized_keys format.
	AuthorizedKeys []string
}
