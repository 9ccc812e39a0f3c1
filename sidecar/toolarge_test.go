package sidecar

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTooLargeReadByRealClients: an oversized body is answered 413
// too_large, and the answer is read, by the clients PHP integrators use —
// curl's CLI and PHP's curl extension with their default options (which
// send Expect: 100-continue) — with a Content-Length, without Expect, and
// chunked. The server once answered 100 Continue, read 64 KiB, wrote 413
// and closed with the upload unread: the TCP reset wiped the 413 before
// the client read it, in about half the tries.
func TestTooLargeReadByRealClients(t *testing.T) {
	if testing.Short() {
		t.Skip("runs curl and PHP 50 times each")
	}
	curl := requireTool(t, "curl", "curl")
	php := requireTool(t, "php", "php-cli php-curl")
	ps := startParkServer(t, true, 64)
	ps.connect(t, goodID, "alice")
	body := filepath.Join(t.TempDir(), "body.json")
	big := `{"to":"bob@example.test","body":"` + strings.Repeat("x", 4<<20) + `"}`
	if err := os.WriteFile(body, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "http://" + ps.addr + "/v1/messages"
	const phpScript = `$c = curl_init(getenv("URL"));
$h = ["X-Session-Id: " . getenv("SID"), "Content-Type: application/json"];
if (getenv("CHUNKED")) { $h[] = "Transfer-Encoding: chunked"; }
curl_setopt_array($c, [CURLOPT_POST => true, CURLOPT_POSTFIELDS => file_get_contents(getenv("BODY")),
  CURLOPT_HTTPHEADER => $h, CURLOPT_RETURNTRANSFER => true, CURLOPT_TIMEOUT => 20]);
$out = curl_exec($c);
if ($out === false) { echo "error ", curl_errno($c), " ", curl_error($c); exit; }
echo curl_getinfo($c, CURLINFO_RESPONSE_CODE), " ", $out;`
	clients := []struct {
		name string
		cmd  func() *exec.Cmd
	}{
		{"curl", func() *exec.Cmd { // > 1 MiB: curl sends Expect: 100-continue
			return exec.Command(curl, "-sS", "-H", "X-Session-Id: "+goodID, "--data-binary", "@"+body, "-w", " %{http_code}", url)
		}},
		{"curl without Expect", func() *exec.Cmd {
			return exec.Command(curl, "-sS", "-H", "X-Session-Id: "+goodID, "-H", "Expect:", "--data-binary", "@"+body, "-w", " %{http_code}", url)
		}},
		{"curl chunked", func() *exec.Cmd {
			return exec.Command(curl, "-sS", "-H", "X-Session-Id: "+goodID, "-H", "Transfer-Encoding: chunked", "--data-binary", "@"+body, "-w", " %{http_code}", url)
		}},
		{"php curl", func() *exec.Cmd {
			c := exec.Command(php, "-r", phpScript)
			c.Env = append(os.Environ(), "URL="+url, "SID="+goodID, "BODY="+body)
			return c
		}},
		{"php curl chunked", func() *exec.Cmd {
			c := exec.Command(php, "-r", phpScript)
			c.Env = append(os.Environ(), "URL="+url, "SID="+goodID, "BODY="+body, "CHUNKED=1")
			return c
		}},
	}
	for _, cl := range clients {
		t.Run(cl.name, func(t *testing.T) {
			bad := map[string]int{}
			for range 50 {
				out, err := cl.cmd().CombinedOutput()
				got := string(out)
				if err != nil || !strings.Contains(got, `"code":"too_large"`) || !strings.Contains(got, "413") {
					bad[fmt.Sprintf("%v %.120s", err, got)]++
				}
			}
			if len(bad) > 0 {
				t.Fatalf("%s: answers other than 413 too_large in 50 tries: %v", cl.name, bad)
			}
		})
	}
}

// requireTool fails the test loudly when a client it drives is missing.
func requireTool(tb testing.TB, name, pkg string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("%s not found (%v): apt-get install %s", name, err, pkg)
	}
	return p
}

// TestTooLargeEndlessUpload: the drain after a 413 is bounded, so a client
// uploading forever still gets its 413 and then loses the connection
// within the drain's 2 s; it holds neither a goroutine nor a slot.
func TestTooLargeEndlessUpload(t *testing.T) {
	ps := startParkServer(t, true, 16)
	ps.connect(t, goodID, "alice")
	c, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/messages HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: %s\r\nTransfer-Encoding: chunked\r\n\r\n", goodID)
	start := time.Now()
	sent := make(chan error, 1)
	go func() {
		chunk := []byte(fmt.Sprintf("%x\r\n%s\r\n", 32<<10, strings.Repeat("x", 32<<10)))
		for {
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				sent <- err
				return
			}
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("endless upload: %v %v", resp, err)
	}
	select {
	case err := <-sent:
		t.Logf("upload cut after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(8 * time.Second):
		t.Fatal("the connection of an endless upload is still open 8 s after its 413")
	}
}
