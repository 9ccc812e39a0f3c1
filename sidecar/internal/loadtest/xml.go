package loadtest

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
)

// element is a generic XML element: enough of a stanza for the BOSH and
// WebSocket clients, which only look at names, a few attributes and the
// body of messages.
type element struct {
	XMLName  xml.Name
	Attrs    []xml.Attr `xml:",any,attr"`
	Children []element  `xml:",any"`
	Text     string     `xml:",chardata"`
}

func (e *element) attr(local string) string {
	for _, a := range e.Attrs {
		if a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

func (e *element) child(local string) *element {
	for i := range e.Children {
		if e.Children[i].XMLName.Local == local {
			return &e.Children[i]
		}
	}
	return nil
}

// maxElement bounds what the clients accept from the server.
const maxElement = 1 << 20

// parseElement decodes one element (a BOSH <body/> or a WebSocket frame).
func parseElement(data []byte) (*element, error) {
	if len(data) > maxElement {
		return nil, fmt.Errorf("loadtest: %d-byte element exceeds %d", len(data), maxElement)
	}
	var e element
	d := xml.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(&e); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("loadtest: empty XML payload")
		}
		return nil, fmt.Errorf("loadtest: XML: %w", err)
	}
	return &e, nil
}

// escape is XML character escaping for text and attribute values.
func escape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// bodyOf returns the message body of a <message/> element, or "".
func bodyOf(e *element) string {
	if e.XMLName.Local != "message" {
		return ""
	}
	if b := e.child("body"); b != nil {
		return b.Text
	}
	return ""
}

// saslFailure turns a <failure/> into an error naming its condition.
func saslFailure(e *element) error {
	cond := "unknown"
	if len(e.Children) > 0 {
		cond = e.Children[0].XMLName.Local
	}
	return fmt.Errorf("%w: %s", ErrAuth, cond)
}
