// Runs containerd's own snapshotter test suite (snapshots/testsuite, from
// containerd 1.6) against `loci snapshotter` through containerd's gRPC proxy
// client, exactly as containerd talks to a proxy plugin. Each test gets a
// fresh daemon on a fresh root, as the suite expects of a snapshotter.
//
// Built offline in GOPATH mode against Debian's /usr/share/gocode; the Rust
// test tests/snapshotter_suite.rs builds and runs it with LOCI_BIN set.
package suite

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

func TestLociSnapshotter(t *testing.T) {
	bin := os.Getenv("LOCI_BIN")
	if bin == "" {
		t.Fatal("LOCI_BIN must name the loci binary under test")
	}
	testsuite.SnapshotterSuite(t, "loci", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return start(bin, root)
	})
}

// start runs `loci snapshotter` on root, waits for its socket and returns
// a proxy snapshotter over it, with a cleanup that stops the daemon.
func start(bin, root string) (snapshots.Snapshotter, func() error, error) {
	sock := filepath.Join(filepath.Dir(root), "loci.sock")
	cmd := exec.Command(bin, "snapshotter", "--address", sock, "--root", root)
	cmd.Env = append(os.Environ(), "LOCI_LOG=warn")
	cmd.Stdout = os.Stderr
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, nil, fmt.Errorf("loci snapshotter did not create %s", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", addr)
	}
	// Debian's grpc-go predates `insecure.NewCredentials`; it would send
	// the socket path as :authority, which HTTP/2 servers refuse.
	conn, err := grpc.Dial(sock, grpc.WithInsecure(), grpc.WithContextDialer(dialer), grpc.WithAuthority("localhost"))
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, err
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "loci")
	cleanup := func() error {
		_ = sn.Close()
		_ = conn.Close()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			return err
		}
		return cmd.Wait()
	}
	return sn, cleanup, nil
}
