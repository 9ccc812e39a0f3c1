package phpsession_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// requirePHP fails when the PHP CLI is missing, and skips only under -short.
func requirePHP(t testing.TB) string {
	t.Helper()
	return phpsessiontest.PHP(t)
}

// TestDifferentialPHP has real PHP write a corpus of sessions with each
// serialize handler through its own files handler, and print its own view
// of every session; the Go decoder must see exactly the same. PHP then
// reads crafted bytes no PHP writer produces with a real session_start():
// where PHP destroys the session, Decode must fail with ErrMalformed; where
// PHP keeps it, Decode must agree on every variable; where PHP keeps a
// $_SESSION that is not an array (php_serialize's N;, a scalar, an object),
// Decode must return a session with no variables.
func TestDifferentialPHP(t *testing.T) {
	php := requirePHP(t)
	total, crafted := 0, 0
	for _, handler := range []string{"php", "php_serialize", "php_binary"} {
		t.Run(handler, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.CommandContext(t.Context(), php, "-d", "session.save_path="+dir,
				"-d", "session.serialize_handler="+handler, "-d", "session.use_strict_mode=0",
				"testdata/corpus.php", dir, handler)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("php: %v\n%s", err, stderr.String())
			}
			ser, err := phpsession.ParseSerializer(handler)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := phpsession.ParseCharset("ISO-8859-1")
			if err != nil {
				t.Fatal(err)
			}
			written, planted, rejected := 0, 0, 0
			sc := bufio.NewScanner(bytes.NewReader(out))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var line corpusLine
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					t.Fatalf("corpus line: %v", err)
				}
				data := line.Raw
				if data == nil {
					if data, err = os.ReadFile(filepath.Join(dir, "sess_"+line.ID)); err != nil {
						t.Fatal(err)
					}
					written++
				} else {
					planted++
				}
				vars, err := phpsession.Decode(data, ser, phpsession.DefaultLimits)
				switch {
				case line.OK != nil && !*line.OK:
					rejected++
					if !line.Destroyed {
						t.Errorf("%s: PHP refused %q without destroying it: the corpus no longer shows what it claims", line.ID, data)
					}
					if !errors.Is(err, phpsession.ErrMalformed) {
						t.Errorf("%s: PHP destroys this session, Decode = %v, want ErrMalformed\nraw: %q\nphp: %q", line.ID, err, data, line.Warnings)
					}
					continue
				case err != nil:
					t.Errorf("%s: PHP reads this session, Decode = %v\nraw: %q", line.ID, err, data)
					continue
				case line.Scalar != "":
					if vars.Len() != 0 {
						t.Errorf("%s: PHP's $_SESSION is a %s, Decode found %d variables\nraw: %q", line.ID, line.Scalar, vars.Len(), data)
					}
					continue
				}
				got, err := phpsession.MarshalJSON(vars, cs)
				if err != nil {
					t.Fatal(err)
				}
				if msg := sameJSON(got, line.JSON); msg != "" {
					t.Errorf("%s: %s\n go: %s\nphp: %s\nraw: %q", line.ID, msg, got, line.JSON, data)
				}
			}
			if written < 90 || planted < 200 {
				t.Fatalf("only %d written and %d crafted corpus sessions", written, planted)
			}
			t.Logf("%d sessions PHP wrote, %d crafted (%d of them destroyed by PHP)", written, planted, rejected)
			total += written + planted
			crafted += planted
		})
	}
	if !t.Failed() {
		t.Logf("Go and PHP 8.2 agree on all %d sessions (%d crafted)", total, crafted)
	}
}

// corpusLine is one session of testdata/corpus.php's output. Raw, OK,
// Destroyed, Warnings and Scalar are set for crafted sessions only.
type corpusLine struct {
	ID        string          `json:"id"`
	JSON      json.RawMessage `json:"json"`
	Raw       []byte          `json:"raw"` // base64 in the JSON
	OK        *bool           `json:"ok"`  // session_start()'s result
	Destroyed bool            `json:"destroyed"`
	Warnings  []string        `json:"warnings"`
	Scalar    string          `json:"scalar"` // get_debug_type($_SESSION) when it is no array
}

// sameJSON compares two documents token by token (so key order counts),
// numbers by value.
func sameJSON(a, b []byte) string {
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	for i := 0; ; i++ {
		ta, ea := da.Token()
		tb, eb := db.Token()
		if ea == io.EOF && eb == io.EOF {
			return ""
		}
		if ea != nil || eb != nil {
			return "token error: " + errString(ea) + " / " + errString(eb)
		}
		na, oka := ta.(json.Number)
		nb, okb := tb.(json.Number)
		if oka && okb {
			fa, _ := strconv.ParseFloat(string(na), 64)
			fb, _ := strconv.ParseFloat(string(nb), 64)
			if fa == fb || (math.IsNaN(fa) && math.IsNaN(fb)) {
				continue
			}
		}
		if ta != tb {
			return "token " + strconv.Itoa(i) + " differs"
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}
