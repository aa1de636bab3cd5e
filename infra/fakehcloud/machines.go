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
	// Provision runs when the create_server action completes: the disk
	// takes the content of image if it is a snapshot whose disk SaveImage
	// kept (else it stays as Create made it), and the machine takes the
	// server type's architecture (x86, arm).
	Provision(id int64, arch string, image int64) error
	// Boot powers the server on. With rescue non-nil it boots the rescue
	// system, which accepts root logins with rescue.AuthorizedKeys on
	// ipv4:22 after the configured boot delay; otherwise it boots from disk:
	// the Talos API listens on ipv4:50000 after a boot delay if the disk
	// holds a Talos image of the machine's architecture, else nothing.
	Boot(id int64, rescue *Rescue) error
	// Halt powers the server off at once, dropping SSH sessions and Talos
	// API connections.
	Halt(id int64) error
	// SaveImage keeps the server's disk as the content of snapshot image
	// and returns its disk.FileDigest.
	SaveImage(id, image int64) (digest string, err error)
	// CorruptImage damages the saved disk of image so that it boots
	// nothing, and returns its new digest.
	CorruptImage(image int64) (digest string, err error)
	// DeleteImage drops the saved disk of image, if there is one.
	DeleteImage(image int64) error
	// Delete halts the server and releases its disk and address.
	Delete(id int64) error
}

// Rescue describes a rescue boot.
type Rescue struct {
	// AuthorizedKeys are public keys in authorized_keys format.
	AuthorizedKeys []string
}
