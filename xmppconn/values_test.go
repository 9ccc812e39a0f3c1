package xmppconn

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// TestParseValues: each input rule accepts exactly its values and refuses
// everything else with an ErrInvalidArgument that names the field.
func TestParseValues(t *testing.T) {
	candidates := []string{
		"", "chat", "groupchat", "normal", "headline", "error", "away", "dnd", "xa", "available", "unavailable",
		"active", "composing", "paused", "inactive", "gone", "subscribe", "approve", "deny", "cancel",
		"subscribed", "unsubscribe", "unsubscribed", "Chat", " chat", "away\n", "composing\x00", "<x/>", "🙂",
	}
	for _, tc := range []struct {
		field string
		parse func(string) (string, error)
		want  map[string]string // accepted value -> what it parses to
	}{
		{"message type", func(s string) (string, error) { v, err := ParseMessageType(s); return string(v), err },
			map[string]string{"": "chat", "chat": "chat", "groupchat": "groupchat", "normal": "normal", "headline": "headline"}},
		{"presence show", func(s string) (string, error) { v, err := ParseShow(s); return string(v), err },
			map[string]string{"": "", "away": "away", "chat": "chat", "dnd": "dnd", "xa": "xa"}},
		{"chat state", func(s string) (string, error) { v, err := ParseChatState(s); return string(v), err },
			map[string]string{"active": "active", "composing": "composing", "paused": "paused", "inactive": "inactive", "gone": "gone"}},
		{"subscription action", func(s string) (string, error) { v, err := ParseSubscriptionAction(s); return string(v), err },
			map[string]string{"subscribe": "subscribe", "approve": "approve", "deny": "deny", "cancel": "cancel"}},
	} {
		for _, s := range candidates {
			got, err := tc.parse(s)
			want, ok := tc.want[s]
			switch {
			case ok && (err != nil || got != want):
				t.Errorf("%s %q = %q, %v; want %q", tc.field, s, got, err, want)
			case !ok && !errors.Is(err, ErrInvalidArgument):
				t.Errorf("%s %q = %q, %v; want an ErrInvalidArgument", tc.field, s, got, err)
			case !ok && !strings.Contains(err.Error(), tc.field+" "+fmt.Sprintf("%q", s)):
				t.Errorf("%s %q: the error does not name the field and value: %v", tc.field, s, err)
			}
		}
	}
	for a, typ := range map[SubscriptionAction]string{SubscribeAction: "subscribe", ApproveAction: "subscribed", DenyAction: "unsubscribed", CancelAction: "unsubscribed"} {
		if got := a.presenceType(); got != typ {
			t.Errorf("%s sends type %q, want %q", a, got, typ)
		}
	}
}

// TestOutgoingAndValidate: the checks Send and SendPresence make, as a
// caller validating early sees them.
func TestOutgoingAndValidate(t *testing.T) {
	m, err := Message{To: "Bob@Example.test/x", Body: "oi", Receipt: true}.Outgoing()
	if err != nil || m.To != "bob@example.test/x" || m.Type != ChatMessage || !m.Receipt {
		t.Fatalf("chat = %+v, %v", m, err)
	}
	m, err = Message{To: "sala@conference.example.test", Type: "groupchat", Body: "oi", Receipt: true}.Outgoing()
	if err != nil || m.Receipt {
		t.Fatalf("groupchat = %+v, %v (a room gets no receipt request)", m, err)
	}
	for _, bad := range []Message{
		{To: "sala@conference.example.test/Bob", Type: GroupChatMessage},
		{To: "bob@example.test", Type: ErrorMessage},
		{To: "bob@example.test", Type: "spam"},
		{To: "bob@example.test", ChatState: "typing"},
	} {
		if _, err := bad.Outgoing(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: %v, want an ErrInvalidArgument", bad, err)
		}
	}
	if _, err := (Message{To: "@@"}).Outgoing(); !errors.Is(err, ErrInvalidJID) {
		t.Errorf("bad To: %v", err)
	}
	hash := "nope"
	for _, bad := range []Presence{{Show: "sleepy"}, {Type: "subscribed"}, {Priority: MaxPriority + 1}, {Priority: MinPriority - 1}, {Avatar: &hash}} {
		if err := bad.Validate(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: %v, want an ErrInvalidArgument", bad, err)
		}
	}
	if err := (Presence{Type: "unavailable", Show: ShowXA, Priority: MinPriority}).Validate(); err != nil {
		t.Error(err)
	}
	if _, err := (Config{Domain: "example.test", Addr: "127.0.0.1:5222", User: "a", Password: "p", InitialPresence: &Presence{Show: "sleepy"}}).normalize(); !errors.Is(err, ErrConfig) || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("bad InitialPresence: %v", err)
	}
}

// TestStanzaErrorIs: errors.Is matches a StanzaError by the target's
// non-empty type and condition, through wrapping, and nothing else.
func TestStanzaErrorIs(t *testing.T) {
	err := fmt.Errorf("xmppconn: joining: %w", &StanzaError{Type: "cancel", Condition: "item-not-found", Text: "gone"})
	for _, tc := range []struct {
		target error
		want   bool
	}{
		{ErrItemNotFound, true},
		{&StanzaError{}, true},
		{&StanzaError{Type: "cancel"}, true},
		{&StanzaError{Type: "cancel", Condition: "item-not-found", Text: "other text"}, true},
		{&StanzaError{Type: "modify", Condition: "item-not-found"}, false},
		{ErrServiceUnavailable, false},
		{ErrFeatureNotImplemented, false},
		{ErrInvalidArgument, false},
		{&StreamError{Condition: "item-not-found"}, false},
	} {
		if got := errors.Is(err, tc.target); got != tc.want {
			t.Errorf("errors.Is(%v, %v) = %v", err, tc.target, got)
		}
	}
	if errors.Is(errors.New("item-not-found"), ErrItemNotFound) {
		t.Error("a plain error matched")
	}
}

// TestStreamErrorIs: errors.Is matches a StreamError by the target's
// non-empty condition, through wrapping, and never a StanzaError.
func TestStreamErrorIs(t *testing.T) {
	err := fmt.Errorf("xmppconn: read: %w", &StreamError{Condition: "conflict", Text: "replaced by a new connection"})
	for _, tc := range []struct {
		target error
		want   bool
	}{
		{ErrStreamConflict, true},
		{&StreamError{}, true},
		{&StreamError{Condition: "conflict", Text: "other text"}, true},
		{ErrStreamSystemShutdown, false},
		{ErrStreamPolicyViolation, false},
		{&StanzaError{Condition: "conflict"}, false},
		{&StanzaError{}, false},
		{ErrClosed, false},
	} {
		if got := errors.Is(err, tc.target); got != tc.want {
			t.Errorf("errors.Is(%v, %v) = %v", err, tc.target, got)
		}
	}
	if errors.Is(&StanzaError{Type: "cancel", Condition: "policy-violation"}, ErrStreamPolicyViolation) {
		t.Error("a stanza error matched a stream error condition")
	}
	if errors.Is(errors.New("conflict"), ErrStreamConflict) {
		t.Error("a plain error matched")
	}
}
