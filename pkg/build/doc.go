// Package build turns a build request into labelled Talos snapshots on
// Hetzner Cloud, in short steps whose checkpoint is the build server's own
// labels: every step checks the cloud's real state before it acts, so any
// invocation can pick up where another stopped, and none has to outlive
// Lambda's 15 minutes.
//
// # Steps
//
// The table steps (steps.go) lists them in order, each with its function,
// its budget (the time an invocation must have left to start it) and its
// resume rule: what it does when an earlier invocation died in it. One file
// holds each step.
//
//  1. check (step_check.go, STEP_TIMEOUT; reads only). The request must
//     follow the configuration and the function's timeout must hold the
//     longest step, or the build fails before any API call. A server of the
//     target's name → go on from its checkpoint. An available snapshot of
//     the target → done (a forced build instead records the snapshots it
//     will replace). A failure record that holds the target → failed,
//     creating nothing. The Image Factory must serve the image (one it is
//     still building is retried by Lambda). Check runs before the lease is
//     taken and again under it: another invocation may have moved on, or
//     finished the build, meanwhile.
//  2. server (step_server.go, STEP_TIMEOUT; name taken → adopt the server,
//     if ours). Create the server, off, with the lease key (so no root
//     password is mailed), on a type with the architecture's smallest disk:
//     a snapshot creates only servers with at least its build server's
//     disk. No capacity → next location, then next type of that disk; never
//     a bigger disk.
//  3. install (step_install.go, INSTALL_TIMEOUT; rewrites the whole disk,
//     from a fresh rescue boot). Enable rescue with the lease key, boot, SSH
//     with patience, write the image with the script of disk.go, read the
//     partition table back and check it, power off, checkpoint snapshot.
//  4. snapshot (step_snapshot.go, STEP_TIMEOUT; a snapshot labelled
//     build=<server id> exists → adopt it). Checkpoint wait first, then
//     create_image: while a snapshot is taken the server is locked, and
//     nothing is written to it afterwards. With VERIFY_BOOT the snapshot
//     carries only the target's labels and hcloud-k8s.io/pending=verify:
//     every consumer selects on os=talos, so none can pick it yet.
//  5. wait (step_wait.go, STEP_TIMEOUT; none or gone → snapshot again, three
//     times at most). Poll until the snapshot is available, handing over to
//     a new invocation after SNAPSHOT_WAIT. A snapshot that failed, or stays
//     creating past SNAPSHOT_TIMEOUT, loses its consumer labels, is deleted
//     and fails the build.
//  6. verify (step_verify.go, VERIFY_TIMEOUT; a boot server of the name →
//     adopt it; a published snapshot is not checked again). Create a server
//     from the snapshot like the build server (smallest disk, location
//     fallback, the lease key, no user data, so Talos waits in maintenance
//     mode), power it on and poll the Talos API on port 50000: booted is
//     Version answering (compared with the target) or, before Talos
//     v1.13, Unimplemented over TLS. Then the snapshot gets the consumer
//     labels in place of its pending mark; its created time, which
//     consumers sort on, stays. A snapshot that does not boot within
//     VERIFY_TIMEOUT is discarded and fails the build (code boot-check).
//     Without VERIFY_BOOT snapshots are published when created.
//  7. cleanup (step_cleanup.go, STEP_TIMEOUT; deletes are idempotent).
//     Delete duplicate snapshots of a repeated create_image, the boot
//     server, the build server, and for a forced build the snapshots it
//     replaces (never the newest).
//
// A step answered `locked` runs again after a pause, three times, then
// hands over. A step that fails deterministically deletes the server and
// records the failure (failure.go); a transient failure keeps the server
// and ends the invocation with an error, so that Lambda retries from the
// checkpoint. How a build ends is set in one place (outcome.go); a
// publication and a failure for good are announced on EventBridge
// (announce.go). A build
// that publishes its snapshot, or fails for good, is announced to
// subscribers (announce.go); no other end is.
//
// # Lease
//
// Only one invocation acts on a target: the lease is the SSH key named like
// the build server (lease.go). Key names are unique per project, so
// creating it is an atomic test-and-set; label updates are last-write-wins.
// The key is also the rescue key, its private half only in the holder's
// memory. A heartbeat renews its expiry label every LEASE_TTL/3. When
// renewals fail until shortly before it could lapse, or the key is gone,
// the run's context is cancelled; the lease is verified before every step
// and before anything is deleted. A request that meets a live holder
// answers in_progress; one whose holder died waits for the lease to expire
// and takes over, or, when that is beyond its time, is retried by Lambda.
// A lost create reply is recognised by the key's fingerprint, never by an
// owner label (Lambda's retries keep the request id). Before the lease, the
// deployment marker must name this deployment (deployment.go).
//
// # Requests
//
// A request (request.go) names a version and optionally an architecture
// and a schematic (empty: every configured one), force (rebuild and
// replace what exists), and a queue: the builds of the same architecture
// and schematic that follow, oldest first, started one after another
// (queue.go). Continuations, which the Builder starts itself when its time
// runs short, carry the origin request and a count of invocations in a row
// that made no progress (three at most), signed with a key derived from
// the Hetzner token so that no payload can set them (continuation.go).
// Every field is checked against the configuration and the release policy
// before anything is done (policy.go).
package build
