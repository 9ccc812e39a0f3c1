package xmppconn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"sync"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// Dial a co-located server over STARTTLS, print what arrives, and send a
// message with a delivery receipt request.
func ExampleDial() {
	roots := x509.NewCertPool() // add the server's CA here
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := xmppconn.Dial(ctx, xmppconn.Config{
		Addr:      "127.0.0.1:5222",
		Domain:    "example.org",
		TLSConfig: &tls.Config{RootCAs: roots},
		User:      "alice",
		Password:  "secret",
		Resource:  "expresso-web",
		Reconnect: true,
		Carbons:   true,
		Handler: xmppconn.HandlerFunc(func(ev xmppconn.Event) {
			switch ev := ev.(type) {
			case *xmppconn.Message:
				fmt.Printf("%s says %q\n", ev.From, ev.Body)
			case *xmppconn.StateChange:
				if ev.ContinuityLost {
					fmt.Println("stream replaced: reload roster and history")
				}
			}
		}),
	})
	switch {
	case errors.Is(err, xmppconn.ErrAuth):
		log.Print("wrong password: do not retry")
		return
	case err != nil:
		log.Print(err)
		return
	}
	defer conn.Close(context.Background())
	id, err := conn.Send(ctx, xmppconn.Message{To: "bob@example.org", Body: "hi", Receipt: true})
	if err != nil {
		log.Print(err)
		return
	}
	fmt.Println("sent", id)
}

// Roster items come back with their groups; pushes arrive as
// *xmppconn.RosterPush events.
func ExampleConn_Roster() {
	var conn *xmppconn.Conn // from Dial
	if conn == nil {
		return
	}
	ctx := context.Background()
	if err := conn.SetRosterItem(ctx, xmppconn.RosterItem{JID: "bob@example.org", Name: "Bob", Groups: []string{"Friends"}}); err != nil {
		log.Print(err)
	}
	if err := conn.Subscribe(ctx, "bob@example.org", "subscribe"); err != nil {
		log.Print(err)
	}
	items, err := conn.Roster(ctx)
	if err != nil {
		log.Print(err)
		return
	}
	for _, it := range items {
		fmt.Println(it.JID, it.Name, it.Groups, it.Subscription)
	}
}

func ExampleParseJID() {
	j, err := xmppconn.ParseJID("Alice@Example.ORG/Gajim")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(j, j.Bare())
	// Output: alice@example.org/Gajim alice@example.org
}

// sharedStore stands for storage other processes read (Redis, say): it
// applies each call to a ResumeState, which is what it would keep.
type sharedStore struct {
	mu sync.Mutex
	st xmppconn.ResumeState
}

func (s *sharedStore) Save(st xmppconn.ResumeState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
	return nil
}

func (s *sharedStore) Handled(h uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Handled(h)
	return nil
}

func (s *sharedStore) Sent(raw []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Sent(raw)
	return nil
}

func (s *sharedStore) Acked(h uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Ack(h)
}

// A session kept in a shared store is handed over: one process detaches
// (no unavailable, no stream close), another resumes it from the stored
// state, and contacts notice nothing.
func ExampleResume() {
	cfg := xmppconn.Config{
		Addr: "127.0.0.1:5222", Domain: "example.org", User: "alice", Password: "secret",
		Resource: "expresso-web", Reconnect: true,
	}
	store := &sharedStore{}
	cfg.ResumeStore = store
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := xmppconn.Dial(ctx, cfg)
	if err != nil {
		log.Print(err)
		return
	}
	// Process A lets go (a graceful hand-over; after a crash the store
	// holds the same).
	if _, err := conn.Detach(ctx); err != nil {
		log.Print(err) // ErrNotResumable: B will log in afresh
	}
	store.mu.Lock()
	saved, err := json.Marshal(store.st)
	store.mu.Unlock()
	if err != nil {
		log.Print(err)
		return
	}

	// Process B, with the same credentials and a store of its own.
	st, err := xmppconn.ParseResumeState(saved)
	if err != nil {
		log.Print(err) // corrupted, or another version: log in with Dial
		return
	}
	cfg.ResumeStore = &sharedStore{}
	conn, err = xmppconn.Resume(ctx, cfg, st)
	if err != nil {
		log.Print(err)
		return
	}
	defer conn.Close(context.Background())
	if !conn.Resumed() {
		fmt.Println("fresh login: what arrived meanwhile went to offline storage")
	}
}

// Make before break: process B logs in ahead while process A still serves
// the session, so that taking it over once A detached is one round trip.
func ExamplePrepare() {
	cfg := xmppconn.Config{
		Addr: "127.0.0.1:5222", Domain: "example.org", User: "alice", Password: "secret",
		Resource: "expresso-web", Reconnect: true,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Process B, while A still serves alice: connected, TLS, SASL, the
	// stream restarted, no resource bound; closed by itself after 10 s.
	warm, err := xmppconn.Prepare(ctx, cfg, 10*time.Second)
	if err != nil {
		log.Print(err) // B will log in when it takes over, with Resume
		return
	}
	defer warm.Close() // a Warm not used is closed; after Resume, a no-op

	// A detaches; B reads the state A's store holds (as in ExampleResume).
	var saved []byte // read from the shared store
	st, err := xmppconn.ParseResumeState(saved)
	if err != nil {
		log.Print(err)
		return
	}
	cfg.ResumeStore = &sharedStore{}
	conn, err := warm.Resume(ctx, cfg, st)
	if err != nil {
		log.Print(err)
		return
	}
	defer conn.Close(context.Background())
	// Warmed is false when the prepared connection had died or expired:
	// Resume then logged in afresh on a new one.
	fmt.Println("resumed:", conn.Resumed(), "on the prepared connection:", conn.Warmed())
}
