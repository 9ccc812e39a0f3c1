package xmppconn

import (
	"io"
	"sync"
)

// readBufSize is the size of the pooled read buffers.
const readBufSize = 2048

var readBufPool = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}

// byteReader is a buffered byte reader that holds no buffer while idle: it
// waits for traffic with a one-byte read, takes a pooled buffer only while
// bytes are flowing and gives it back as soon as it is drained. Thousands
// of idle connections therefore keep no read buffers of their own.
type byteReader struct {
	r        io.Reader
	buf      *[]byte // pooled; nil when drained
	pos, end int
	one      [1]byte
	hasOne   bool
}

// Buffered returns the number of bytes readable without blocking.
func (b *byteReader) Buffered() int {
	n := b.end - b.pos
	if b.hasOne {
		n++
	}
	return n
}

// ReadByte returns the next byte, reading more when the buffer is empty.
func (b *byteReader) ReadByte() (byte, error) {
	if b.hasOne {
		b.hasOne = false
		return b.one[0], nil
	}
	if b.pos == b.end {
		if err := b.fill(); err != nil {
			return 0, err
		}
	}
	c := (*b.buf)[b.pos]
	b.pos++
	if b.pos == b.end {
		b.release()
	}
	return c, nil
}

func (b *byteReader) fill() error {
	if b.buf == nil {
		b.buf = readBufPool.Get().(*[]byte)
	}
	for {
		n, err := b.r.Read(*b.buf)
		if n > 0 {
			b.pos, b.end = 0, n
			return nil
		}
		if err != nil {
			b.release()
			return err
		}
	}
}

func (b *byteReader) release() {
	if b.buf != nil {
		readBufPool.Put(b.buf)
		b.buf = nil
	}
	b.pos, b.end = 0, 0
}

// wait blocks until at least one byte can be read, without holding a
// buffer while it waits.
func (b *byteReader) wait() error {
	if b.Buffered() > 0 {
		return nil
	}
	for {
		n, err := b.r.Read(b.one[:])
		if n == 1 {
			b.hasOne = true
			return nil
		}
		if err != nil {
			return err
		}
	}
}
