package sidecar

import (
	"context"
	"log/slog"
)

// sessionLog is r.logger.With("user", ..., "session", ...) for one session
// without its cost: Logger.With copies the handler and preformats the
// attributes, a few hundred bytes for each of thousands of online users,
// while this adds the two attributes (first, as With would) only to the
// records actually logged.
type sessionLog struct {
	slog.Handler
	s *session
}

func (h sessionLog) attrs() []slog.Attr {
	return []slog.Attr{slog.String("user", h.s.user), slog.String("session", h.s.short)}
}

func (h sessionLog) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(h.attrs()...)
	r.Attrs(func(a slog.Attr) bool { out.AddAttrs(a); return true })
	return h.Handler.Handle(ctx, out)
}

func (h sessionLog) WithAttrs(as []slog.Attr) slog.Handler {
	return h.Handler.WithAttrs(h.attrs()).WithAttrs(as)
}

func (h sessionLog) WithGroup(name string) slog.Handler {
	return h.Handler.WithAttrs(h.attrs()).WithGroup(name)
}
