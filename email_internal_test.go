package mxrelay

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// utf8Check agrees with utf8.Valid however the bytes are split.
func FuzzUTF8Check(f *testing.F) {
	f.Add([]byte("héllo wörld ✓ 𝄞"), byte(3))
	f.Add([]byte("bad \xff byte"), byte(1))
	f.Add([]byte("cut \xe2\x9c"), byte(2))
	f.Fuzz(func(t *testing.T, p []byte, step byte) {
		u := &utf8Check{}
		k := int(step%7) + 1
		for i := 0; i < len(p); i += k {
			u.Write(p[i:min(i+k, len(p))])
		}
		require.Equal(t, utf8.Valid(p), u.valid(), "%q in pieces of %d", p, k)
	})
}

// FuzzCheckAddress: an address checkAddress accepts cannot break out of
// "MAIL FROM:<...>": no CR, LF, NUL or other control, no space, no angle
// bracket, valid UTF-8, at most 254 octets.
func FuzzCheckAddress(f *testing.F) {
	for _, s := range []string{"a@example.com", "", "postmaster", "a@b>\r\nRCPT TO:<c@d", "ü@exämple.com", "a b@c", "a@b\x00", strings.Repeat("x", 300) + "@y"} {
		f.Add(s, true)
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, a string, recipient bool) {
		role := "sender"
		if recipient {
			role = "recipient"
		}
		if err := checkAddress(role, a); err != nil {
			require.ErrorIs(t, err, ErrInvalidEmail)
			return
		}
		require.True(t, utf8.ValidString(a))
		require.LessOrEqual(t, len(a), maxPath-2)
		require.False(t, strings.ContainsAny(a, " <>\x7f"), "%q", a)
		for _, c := range []byte(a) {
			require.GreaterOrEqual(t, c, byte(' '), "%q", a)
		}
	})
}

// Regression: waitForWork decided "nothing left" from a look at the queue
// taken before emails were accepted and Close was called, and returned:
// Close then handed back emails that should have gone (seen once in CI).
func TestCloseRightAfterEnqueueStillSends(t *testing.T) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	looked := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	testHookIdle = func() {
		once.Do(func() {
			close(looked)
			<-release // the worker pauses right after finding the queue empty
		})
	}
	defer func() { testHookIdle = nil }()
	c, err := New(relay.URL, relay.APIKey, nil)
	require.NoError(t, err)
	<-looked
	h, err := c.Enqueue(Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: x\r\n\r\n.\r\n")})
	require.NoError(t, err)
	closed := make(chan error, 1)
	go func() { closed <- c.Close(context.Background()) }()
	require.Eventually(t, func() bool { // Close has closed draining
		select {
		case <-c.draining:
			return true
		default:
			return false
		}
	}, 5*time.Second, time.Millisecond)
	close(release)
	require.NoError(t, <-closed, "nothing handed back")
	res, err := h.Wait(context.Background())
	require.NoError(t, err)
	require.True(t, res.Delivered())
}
