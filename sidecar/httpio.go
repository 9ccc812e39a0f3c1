package sidecar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"expressolivre.org/imsidecar/xmppconn"
)

// How handlers read requests and write answers: strict JSON bodies,
// JIDs from the path or body, JSON answers. The shapes are in wire.go.

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if v != nil {
		json.NewEncoder(w).Encode(v)
	}
}

// readCapped reads body whole, refusing more than limit bytes
// (ErrTooLarge) and a read that fails (ErrBadRequest).
func readCapped(body io.Reader, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(body, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading body: %w", ErrBadRequest, err)
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%w: body over %d bytes", ErrTooLarge, limit)
	}
	return b, nil
}

// decode reads a JSON body strictly: capped, unknown fields rejected, one
// value only. An empty body leaves v untouched when optional.
func decode(r *http.Request, v any, optional bool) error {
	body, err := readCapped(r.Body, maxBody)
	if err != nil {
		return err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return nil
		}
		return fmt.Errorf("%w: JSON body required", ErrBadRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", ErrBadRequest, strings.TrimPrefix(err.Error(), "json: "))
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON body", ErrBadRequest)
	}
	return nil
}

func validJID(s string, bareOnly bool) (string, error) {
	j, err := xmppconn.ParseJID(s)
	if err != nil || j.Domain == "" || (bareOnly && j.Resource != "") {
		return "", fmt.Errorf("%w: %q is not a valid JID", ErrBadRequest, s)
	}
	return j.String(), nil
}
