package mxrelay_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// bigMail is mail with a body of about 600 KiB: three BDAT chunks.
func bigMail(subject string) mxrelay.Email {
	var b strings.Builder
	b.WriteString(testkit.Msg(subject))
	line := strings.Repeat("x", 98) + "\r\n"
	for b.Len() < 600<<10 {
		b.WriteString(line)
	}
	return mxrelay.Email{From: "a@example.com", To: []string{"a@example.com", "b@example.com"}, Body: strings.NewReader(b.String())}
}

// rt4RunBig is rt3Run with bodies of several BDAT chunks and options o.
func rt4RunBig(t *testing.T, srv *rt2Server, o *mxrelay.Options) []rt3Outcome {
	t.Helper()
	return rtOutcomes(t, srv, o, 800*time.Millisecond, bigMail)
}

// Multi-chunk bodies (three BDAT chunks each) with a shift next to a
// chunk of email one: a chunk reply duplicated, lost, or a refusal of a
// chunk, in both BDAT modes and both styles. Each verdict is checked
// against what the server kept.
func TestRedTeam4ShiftBetweenChunks(t *testing.T) {
	type script struct {
		name string
		over func(word func(string) string, c rt2Cmd) ([]string, bool)
	}
	var chunk int
	scripts := []script{
		{"first chunk reply twice", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 && c.verb == "CHUNK" {
				chunk++
				if chunk == 1 {
					return []string{w("CHUNK"), w("CHUNK")}, true
				}
			}
			return nil, false
		}},
		{"first chunk reply lost, end refused", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 {
				switch c.verb {
				case "CHUNK":
					chunk++
					if chunk == 1 {
						return nil, true
					}
				case "END":
					return []string{"554 5.7.1 refused"}, true
				}
			}
			return nil, false
		}},
		{"second chunk refused", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 {
				switch c.verb {
				case "CHUNK":
					chunk++
					if chunk == 2 {
						return []string{"552 5.3.4 message too big"}, true
					}
					if chunk > 2 {
						return []string{"503 5.5.1 previous chunk refused"}, true
					}
				case "END":
					return []string{"503 5.5.1 previous chunk refused"}, true
				}
			}
			return nil, false
		}},
		{"end reply lost (refused), next email's chunk", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 && c.verb == "END" {
				return nil, true // 554, lost; not kept
			}
			return nil, false
		}},
		{"stray line after the second chunk's reply, end refused", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 {
				switch c.verb {
				case "CHUNK":
					chunk++
					if chunk == 2 {
						return []string{w("CHUNK"), w("RSET")}, true
					}
				case "END":
					return []string{"554 5.7.1 refused"}, true
				}
			}
			return nil, false
		}},
	}
	for _, sc := range scripts {
		for _, st := range rt4Styles {
			for _, m := range []int{0, 2} {
				mode := fakesmtp.EngineModes[m]
				t.Run(sc.name+"/"+st.name+"/"+mode.Name, func(t *testing.T) {
					srv := &rt2Server{ext: mode.Ext}
					chunk = 0
					w := func(verb string) string { return st.reply(srv, verb) }
					srv.enhanced = true
					rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) { return sc.over(w, c) })
					for _, b := range rt3Promises(rt4RunBig(t, srv, nil)) {
						t.Errorf("%s: %s", sc.name, b)
					}
				})
			}
		}
	}
}

// A 421, or a cut, right after QUIT is written, before the 221: the
// results before it must not be wrong; with SpoolDir and RetryUnknown,
// an email sent again says MaybeDelivered.
func TestRedTeam4QuitAnswered421OrCut(t *testing.T) {
	for _, q := range []string{"421", "CUT"} {
		for _, st := range rt4Styles {
			for _, m := range fakesmtp.EngineModes {
				for _, ru := range []bool{false, true} {
					t.Run(fmt.Sprint(q, "/", st.name, "/", m.Name, "/RetryUnknown=", ru), func(t *testing.T) {
						t.Parallel()
						srv := &rt2Server{ext: m.Ext}
						rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
							if c.conn == 1 && c.verb == "QUIT" {
								if q == "421" {
									return []string{"421 4.3.2 shutting down", "CUT"}, true
								}
								return []string{"CUT"}, true
							}
							return nil, false
						})
						for _, b := range rt2Run(t, srv, &mxrelay.Options{SpoolDir: t.TempDir(), RetryUnknown: ru}) {
							t.Error(b)
						}
					})
				}
			}
		}
	}
}
