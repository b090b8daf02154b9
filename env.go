package mxrelay

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// The environment variables that name a relay, read by RelayFromEnv (and so
// by SendMail and cmd/mxrelay-sendmail).
const (
	EnvURL        = "MXRELAY_URL"          // the relay's WebSocket URL
	EnvAPIKey     = "MXRELAY_API_KEY"      // the API key itself
	EnvAPIKeyFile = "MXRELAY_API_KEY_FILE" // a file holding the API key
)

// RelayFromEnv returns the relay URL and the API key that the environment
// names, read through getenv (os.Getenv, or a stub in tests): the URL from
// MXRELAY_URL, the key from MXRELAY_API_KEY or, when that is empty, from the
// file named by MXRELAY_API_KEY_FILE, white space around it removed. A key
// file keeps the key out of the environment of every child process; never
// put a key on a command line, where other users of the machine can read it.
//
// It fails when the URL or the key is missing or the file cannot be read.
// It does not check the URL: New does.
func RelayFromEnv(getenv func(string) string) (relayURL, apiKey string, err error) {
	relayURL = getenv(EnvURL)
	if relayURL == "" {
		return "", "", fmt.Errorf("mxrelay: %s is not set", EnvURL)
	}
	apiKey = getenv(EnvAPIKey)
	if apiKey != "" {
		return relayURL, apiKey, nil
	}
	file := getenv(EnvAPIKeyFile)
	if file == "" {
		return "", "", fmt.Errorf("mxrelay: neither %s nor %s is set", EnvAPIKey, EnvAPIKeyFile)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", "", fmt.Errorf("mxrelay: reading the API key: %w", err)
	}
	apiKey = strings.TrimSpace(string(b))
	if apiKey == "" {
		return "", "", errors.New("mxrelay: the API key file " + file + " is empty")
	}
	return relayURL, apiKey, nil
}
