package mxrelay

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// The environment variables that name a relay, read by RelayFromEnv (and so
// by SendMail and cmd/mxrelay-sendmail).
const (
	EnvURL        = "MXRELAY_URL"          // the relay's WebSocket URL
	EnvAPIKey     = "MXRELAY_API_KEY"      // the API key itself
	EnvAPIKeyFile = "MXRELAY_API_KEY_FILE" // a file holding the API key
)

// maxKeyFile bounds an API key file: a key is a line, far shorter.
const maxKeyFile = 4 << 10

// RelayFromEnv returns the relay URL and the API key that the environment
// names, read through getenv (os.Getenv, or a stub in tests): the URL from
// MXRELAY_URL, the key from MXRELAY_API_KEY or, when that is empty, from the
// file named by MXRELAY_API_KEY_FILE. A key file keeps the key out of the
// environment of every child process; never put a key on a command line,
// where other users of the machine can read it.
//
// The key file must be a regular file of at most 4 KiB holding one
// non-empty line (white space around it is removed) of printable ASCII
// without spaces, and, on Unix, not readable by every user (mode 0600 or
// 0640, as ssh wants of its keys): a device, a FIFO (opened without
// blocking), a file whose content is not the size the file system gives
// (procfs and sysfs files, such as /proc/<pid>/environ, say 0), a file of
// several lines, a line with a control character or a space, or a file
// anybody can read is refused, so that a mistaken or injected file name
// neither hangs the process nor sends some other file's content as a key.
// The errors never quote the file's content.
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
	apiKey, err = readKeyFile(file)
	if err != nil {
		return "", "", err
	}
	return relayURL, apiKey, nil
}

// readKeyFile reads the API key from the file name, checked as
// RelayFromEnv says.
func readKeyFile(name string) (string, error) {
	f, err := openKeyFile(name)
	if err != nil {
		return "", fmt.Errorf("mxrelay: reading the API key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("mxrelay: reading the API key: %w", err)
	}
	bad := func(why string) error { return fmt.Errorf("mxrelay: the API key file %s %s", name, why) }
	switch {
	case !fi.Mode().IsRegular():
		return "", bad("is not a regular file")
	case fi.Size() > maxKeyFile:
		return "", bad(fmt.Sprintf("is larger than a key can be (%d bytes, more than %d)", fi.Size(), maxKeyFile))
	case worldReadable(fi):
		return "", bad("is readable by every user: make it readable by its owner only (chmod 600)")
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return "", fmt.Errorf("mxrelay: reading the API key: %w", err)
	}
	switch {
	case len(b) > maxKeyFile:
		return "", bad(fmt.Sprintf("is larger than a key can be (more than %d bytes)", maxKeyFile))
	case int64(len(b)) != fi.Size():
		// procfs and sysfs files say 0 and hold more; a file being
		// rewritten is not to be trusted either.
		return "", bad(fmt.Sprintf("holds %d bytes where the file system says %d: not a plain file (procfs, sysfs?), or it changed while read", len(b), fi.Size()))
	}
	line := strings.TrimSuffix(string(b), "\n")
	if strings.ContainsAny(line, "\n") {
		return "", bad("has more than one line: it must hold the key alone")
	}
	key := strings.TrimSpace(line)
	switch {
	case key == "":
		return "", errors.New("mxrelay: the API key file " + name + " is empty")
	case strings.ContainsFunc(key, func(r rune) bool { return r <= ' ' || r > '~' }):
		return "", bad("holds a character that has no place in an API key (a control character, a space or a non-ASCII character): a key is printable ASCII")
	}
	return key, nil
}
