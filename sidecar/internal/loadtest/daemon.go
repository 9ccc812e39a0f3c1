package loadtest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// daemon is the real imsidecar binary running as a subprocess.
type daemon struct {
	URL    string // API base
	OpsURL string
	Log    string
	cmd    *exec.Cmd
	done   chan struct{}
}

// startDaemon runs bin against p with the PHP sessions in sessDir and the
// extra flags (at least --xmpp-tls), and waits for /readyz.
func startDaemon(ctx context.Context, bin string, env []string, dir, sessDir string, p *Prosody, extra ...string) (*daemon, error) {
	return startDaemonOn(ctx, "127.0.0.1", bin, env, dir, sessDir, p, extra...)
}

// startDaemonOn is startDaemon with the API and ops listeners on host, a
// loopback address.
func startDaemonOn(ctx context.Context, host, bin string, env []string, dir, sessDir string, p *Prosody, extra ...string) (*daemon, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	d := &daemon{
		URL:    "http://" + net.JoinHostPort(host, strconv.Itoa(ports[0])),
		OpsURL: "http://" + net.JoinHostPort(host, strconv.Itoa(ports[1])),
		Log:    filepath.Join(dir, "imsidecar.log"),
		done:   make(chan struct{}),
	}
	args := append([]string{"serve",
		"--listen=" + net.JoinHostPort(host, strconv.Itoa(ports[0])),
		"--ops-listen=" + net.JoinHostPort(host, strconv.Itoa(ports[1])),
		"--xmpp-addr=" + p.Addr,
		"--xmpp-domain=" + Domain,
		"--session-store=files",
		"--session-save-path=" + sessDir,
		"--session-max-lifetime=4h",
		"--profile=expresso",
		"--log-level=warn",
	}, extra...)
	logf, err := os.Create(d.Log)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("loadtest: starting imsidecar: %w", err)
	}
	d.cmd = cmd
	go func() { cmd.Wait(); logf.Close(); close(d.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.done:
			return nil, fmt.Errorf("loadtest: imsidecar exited during startup (%v); see %s", cmd.ProcessState, d.Log)
		default:
		}
		if ready(ctx, d.OpsURL+"/readyz") {
			return d, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.Stop()
			return nil, fmt.Errorf("loadtest: imsidecar not ready within 30s; see %s", d.Log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ready(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// PID is the daemon's process id.
func (d *daemon) PID() int { return d.cmd.Process.Pid }

// Stop asks the daemon to shut down (SIGTERM) and kills it after 15s.
func (d *daemon) Stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
	}
}

// BuildSidecar builds ./sidecar/cmd/imsidecar of the module at root into out.
func BuildSidecar(ctx context.Context, root, out string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, "./sidecar/cmd/imsidecar")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("loadtest: go build imsidecar: %w\n%s", err, b)
	}
	return nil
}
