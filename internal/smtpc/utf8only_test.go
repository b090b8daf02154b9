package smtpc

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
)

func TestRuneCut(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want int
	}{
		{"empty", "", 0},
		{"ASCII", "abc", 3},
		{"whole two-byte rune at the end", "aé", 3},
		{"whole four-byte rune at the end", "a😀", 5},
		{"one byte of two", "a\xc3", 1},
		{"two bytes of three", "a\xe2\x82", 1},
		{"three bytes of four", "a\xf0\x9f\x98", 1},
		{"only a lead byte", "\xf0", 0},
		{"continuation bytes with no lead: not cut", "a\x80\x80\x80\x80", 5},
		{"a stray lead byte before a whole rune", "\xc3é", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, runeCut([]byte(tc.in)))
		})
	}
}

// A stream of UTF-8 text gets BDAT chunks that end on character
// boundaries: a character straddling chunkSize goes whole in the next
// chunk. Any other stream gets chunks of chunkSize.
func TestUTF8OnlyCutsChunksOnCharacters(t *testing.T) {
	body := strings.Repeat("x", chunkSize-1) + "é and more\r\n"
	for _, tc := range []struct {
		name     string
		utf8Only bool
		first    int
	}{
		{"UTF-8 only", true, chunkSize - 1},
		{"any byte", false, chunkSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var chunks []string
			nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
				srv.Hello("CHUNKING")
				for {
					l, ok := srv.Line()
					switch {
					case !ok:
						return
					case strings.HasPrefix(l, "BDAT"):
						chunk, _ := srv.Chunk(l)
						chunks = append(chunks, string(chunk))
						srv.Say("250 ok")
					case l == "QUIT":
						srv.Say("221 bye")
						return
					default:
						srv.Say("250 ok")
					}
				}
			})
			c := startClient(t, nc, Config{Timeout: time.Second, UTF8Only: tc.utf8Only})
			c.Start()
			out := runTx(t, c, &Tx{Mail: "MAIL FROM:<a@x>", Rcpts: []string{"RCPT TO:<b@x>"}, Body: strings.NewReader(body)})
			require.NoError(t, c.Wait())
			require.NoError(t, c.Quit())
			c.Close(nil)
			r := <-out
			require.NoError(t, r.Err)
			require.Len(t, chunks, 2)
			assert.Len(t, chunks[0], tc.first)
			assert.Equal(t, body, chunks[0]+chunks[1])
			if tc.utf8Only {
				for i, ch := range chunks {
					assert.True(t, utf8.ValidString(ch), "chunk %d", i)
				}
			}
		})
	}
}
