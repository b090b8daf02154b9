package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/mxrelay/mxrelay"
)

// configPath is the administrator's configuration file. Set another at
// build time with -ldflags "-X main.configPath=/path".
var configPath = "/etc/mxrelay/sendmail.conf"

// envConfig names another configuration file than configPath, for tests
// and machines without one: it is ignored when configPath exists, so that
// whoever sets the environment cannot replace the administrator's file.
const envConfig = "MXRELAY_SENDMAIL_CONFIG"

// configFile returns the configuration file to read: configPath, or the
// file envConfig names when nothing is at configPath. (Whether configPath
// exists is asked of the path itself: a dangling link there is the
// administrator's, and keeps envConfig out.)
func configFile(env func(string) string) string {
	if v := env(envConfig); v != "" {
		if _, err := os.Lstat(configPath); errors.Is(err, fs.ErrNotExist) {
			return v
		}
	}
	return configPath
}

// settings are what the configuration file may set: where the mail and
// the API key go, how the hop to the upstream is protected, and the
// domain of bare user names. A setting there cannot be changed by the
// command line or the environment.
var settings = []string{"url", "api-key-file", "starttls", "tls-server-name", "domain"}

// settingEnv are the environment variables that also give a setting.
var settingEnv = map[string][]string{
	"url":          {mxrelay.EnvURL},
	"api-key-file": {mxrelay.EnvAPIKey, mxrelay.EnvAPIKeyFile},
	"domain":       {envDomain},
}

// envDomain qualifies bare user names, when --domain does not.
const envDomain = "MXRELAY_DOMAIN"

// readConfig reads the configuration file: lines "name = value", blank
// lines and lines starting with "#" ignored. A missing file is no
// configuration; one that cannot be read, that is not a regular file,
// that anyone but its owner may write (it names where the API key goes),
// or that says what it cannot, is an error. The checks are made on the
// opened file, so that it cannot be swapped in between.
func readConfig(path string) (map[string]string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0) // a FIFO does not wait for a writer
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: %s: %w", errConfig, path, err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%w: %s is not a regular file", errConfig, path)
	case runtime.GOOS != "windows" && fi.Mode().Perm()&0o022 != 0:
		return nil, fmt.Errorf("%w: %s may be written by users other than its owner (mode %v): whoever writes it chooses where the mail and the API key go; make it writable by its owner only (chmod go-w)", errConfig, path, fi.Mode().Perm())
	}
	conf := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		switch {
		case !ok || value == "":
			return nil, fmt.Errorf("%w: %s:%d: want name = value", errConfig, path, n)
		case !slices.Contains(settings, name):
			return nil, fmt.Errorf("%w: %s:%d: unknown setting %q (known: %s)", errConfig, path, n, name, strings.Join(settings, ", "))
		case conf[name] != "":
			return nil, fmt.Errorf("%w: %s:%d: %s set twice", errConfig, path, n, name)
		}
		conf[name] = value
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errConfig, path, err)
	}
	return conf, nil
}

// applyConfig puts the configuration file's settings into cfg, refusing
// a command line option (usage) or an environment variable (config) that
// would change one of them. A setting the file does not make may come
// from an option or the environment, but an option may not contradict
// the environment where it names the relay or the key: an option
// appended to the administrator's command line must not beat the
// administrator's MXRELAY_URL or MXRELAY_API_KEY (usage).
func applyConfig(cfg *config, conf map[string]string, path string, env func(string) string) error {
	for _, name := range settings {
		given, flagValue := cfg.given(name)
		value, inFile := conf[name]
		if !inFile {
			if name == "domain" || !given {
				continue // --domain against MXRELAY_DOMAIN: identity, once the name is checked
			}
			for _, v := range settingEnv[name] {
				if e := env(v); e != "" && e != flagValue {
					return usageErr("--%s contradicts %s, set in the environment: an option cannot change where the mail and the API key go", name, v)
				}
			}
			continue
		}
		refuse := func(what string) string {
			return fmt.Sprintf("%s: %s is set in %s, by the administrator, and cannot be changed", what, name, path)
		}
		if given {
			return usageErr("%s", refuse("--"+name))
		}
		for _, v := range settingEnv[name] {
			if env(v) != "" {
				return fmt.Errorf("%w: %s", errConfig, refuse(v))
			}
		}
		if _, ok := startTLSModes[value]; name == "starttls" && !ok {
			return fmt.Errorf("%w: %s: starttls %q: want never, opportunistic or required", errConfig, path, value)
		}
		if err := cfg.setLong(name, value); err != nil {
			return err // not given twice, not empty: cannot happen
		}
		if name == "domain" {
			cfg.domainFrom = "domain in " + path
		}
	}
	return nil
}
