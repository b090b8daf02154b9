package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/mxrelay/mxrelay"
)

// configPath is the administrator's configuration file. Set another at
// build time with -ldflags "-X main.configPath=/path"; the environment's
// MXRELAY_SENDMAIL_CONFIG names another at run time (for tests: the
// environment is the caller's, an appended argument cannot set it).
var configPath = "/etc/mxrelay/sendmail.conf"

// envConfig names another configuration file than configPath.
const envConfig = "MXRELAY_SENDMAIL_CONFIG"

// settings are what the configuration file may set: where the mail and
// the API key go. A setting there cannot be changed by the command line
// or the environment.
var settings = []string{"url", "api-key-file", "starttls", "tls-server-name"}

// readConfig reads the configuration file: lines "name = value", blank
// lines and lines starting with "#" ignored. A missing file is no
// configuration; one that cannot be read, or that says what it cannot,
// is an error.
func readConfig(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConfig, err)
	}
	defer f.Close()
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
// would change one of them.
func applyConfig(cfg *config, conf map[string]string, path string, env func(string) string) error {
	refuse := func(what, name string) error {
		return fmt.Errorf("%s: %s is set in %s, by the administrator, and cannot be changed", what, name, path)
	}
	flag := func(set bool, name string) error {
		if set {
			return usageErr("%v", refuse("--"+name, name))
		}
		return nil
	}
	envs := func(name string, vars ...string) error {
		for _, v := range vars {
			if env(v) != "" {
				return fmt.Errorf("%w: %w", errConfig, refuse(v, name))
			}
		}
		return nil
	}
	for _, name := range settings {
		value, ok := conf[name]
		if !ok {
			continue
		}
		var err error
		switch name {
		case "url":
			if err = flag(cfg.url != "", name); err == nil {
				err = envs(name, mxrelay.EnvURL)
			}
			cfg.url = value
		case "api-key-file":
			if err = flag(cfg.keyFile != "", name); err == nil {
				err = envs(name, mxrelay.EnvAPIKey, mxrelay.EnvAPIKeyFile)
			}
			cfg.keyFile = value
		case "starttls":
			if err = flag(cfg.startTLSSet, name); err == nil {
				err = cfg.setLong(name, value)
			}
		case "tls-server-name":
			err = flag(cfg.tlsName != "", name)
			cfg.tlsName = value
		}
		if err != nil {
			return err
		}
	}
	return nil
}
