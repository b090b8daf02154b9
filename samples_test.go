package mxrelay_test

import (
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// TestSampleMessages sends every message of testdata/messages through both
// encodings: each arrives byte for byte, except that a body which is not
// UTF-8 is refused, unsent, by a JSON-only relay.
func TestSampleMessages(t *testing.T) {
	files, err := filepath.Glob("testdata/messages/*.eml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, binary := range []bool{true, false} {
		s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: !binary})
		c := testkit.NewClient(t, s, nil)
		for _, name := range files {
			t.Run(filepath.Base(name)+map[bool]string{true: "/binary", false: "/json"}[binary], func(t *testing.T) {
				data, err := os.ReadFile(name)
				require.NoError(t, err)
				f, err := os.Open(name)
				require.NoError(t, err)
				defer f.Close()
				before := len(s.Mailbox())
				_, err = c.Send(testkit.Ctx(t), mxrelay.Email{From: "app@example.com", To: []string{"user@example.org"}, Body: f})
				if !binary && !utf8.Valid(data) {
					require.ErrorIs(t, err, mxrelay.ErrNotUTF8)
					assert.Len(t, s.Mailbox(), before)
					return
				}
				require.NoError(t, err)
				box := s.Mailbox()
				require.Len(t, box, before+1)
				assert.Equal(t, string(data), string(box[before].Data))
			})
		}
	}
}
