package sidecar

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestArchitectureMapNamesEveryFile keeps docs/ARCHITECTURE.md's map true
// as files come and go: every non-test Go file of phpsession, xmppconn and
// sidecar (doc.go aside) is named there, and every Go file the page names
// exists.
func TestArchitectureMapNamesEveryFile(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "ARCHITECTURE.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	pkgs := []string{"phpsession", "xmppconn", "sidecar"}
	for _, pkg := range pkgs {
		files, err := filepath.Glob(filepath.Join("..", pkg, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("no Go files in ../%s", pkg)
		}
		for _, f := range files {
			name := filepath.Base(f)
			if strings.HasSuffix(name, "_test.go") || name == "doc.go" {
				continue
			}
			if !strings.Contains(text, "`"+name+"`") {
				t.Errorf("docs/ARCHITECTURE.md does not say what %s/%s owns: give it a line under \"Who owns what\"", pkg, name)
			}
		}
	}
	// Named files: `x.go`, `pkg/x.go`; patterns such as `<feature>_test.go` are not files.
	for _, m := range regexp.MustCompile("`([A-Za-z0-9_./]+\\.go)`").FindAllStringSubmatch(text, -1) {
		name, found := m[1], false
		for _, dir := range append([]string{""}, pkgs...) {
			if _, err := os.Stat(filepath.Join("..", dir, name)); err == nil {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("docs/ARCHITECTURE.md names %s, which is in none of %v", name, pkgs)
		}
	}
}
