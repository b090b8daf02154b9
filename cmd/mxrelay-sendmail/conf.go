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
	"url":             {mxrelay.EnvURL},
	"api-key-file":    {mxrelay.EnvAPIKey, mxrelay.EnvAPIKeyFile},
	"starttls":        {envStartTLS},
	"tls-server-name": {envTLSServerName},
	"domain":          {envDomain},
}

// The environment variables of the settings that are this command's own.
const (
	envStartTLS      = "MXRELAY_STARTTLS"        // --starttls
	envTLSServerName = "MXRELAY_TLS_SERVER_NAME" // --tls-server-name
	envDomain        = "MXRELAY_DOMAIN"          // --domain: qualifies bare user names
)

// readConfig reads the configuration file: lines "name = value", blank
// lines and lines starting with "#" ignored. A missing file is no
// configuration; one that cannot be read, that is not a regular file,
// that anyone but its owner may write (it names where the API key goes),
// that someone else could replace (checkConfigPath), or that says what
// it cannot, is an error. The checks of the file are made on the opened
// file, so that it cannot be swapped in between.
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
	if err := checkConfigPath(path, fi); err != nil {
		return nil, err
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

// applyConfig puts the configuration file's and the environment's
// settings into cfg. A setting in the file cannot be changed: an option
// for it is refused (usage), and so is an environment variable for it
// (config). Otherwise an option may not contradict the environment
// (usage); and once the administrator has configured the relay (the file
// sets url, or MXRELAY_URL is set), an option may only repeat what the
// file or the environment says, so that an option appended to the
// administrator's command line cannot choose a setting the administrator
// left to its default (usage). Without a configured relay (a user giving
// --url by hand) the options may set what the environment does not. A
// --domain that is not a domain name is refused (config) before it is
// compared with anything.
func applyConfig(cfg *config, conf map[string]string, path string, env func(string) string) error {
	relayBy := ""
	switch {
	case conf["url"] != "":
		relayBy = "url in " + path
	case env(mxrelay.EnvURL) != "":
		relayBy = mxrelay.EnvURL
	}
	for _, name := range settings {
		given, flagValue := cfg.given(name)
		if name == "domain" && given {
			if err := checkDomain("--domain", flagValue); err != nil {
				return err
			}
		}
		if value, inFile := conf[name]; inFile {
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
			if err := cfg.setFrom(name, value, name+" in "+path); err != nil {
				return err
			}
			continue
		}
		configured := false
		for _, v := range settingEnv[name] {
			e := env(v)
			if e == "" {
				continue
			}
			configured = true
			if given && !sameSetting(name, e, flagValue) {
				return usageErr("--%s contradicts %s, set in the environment: an option cannot change what the administrator configured", name, v)
			}
			if !given && name != "url" && name != "api-key-file" { // the relay and the key: RelayFromEnv reads them
				if err := cfg.setFrom(name, e, v); err != nil {
					return err
				}
			}
		}
		if given && !configured && relayBy != "" {
			return usageErr("--%s: the relay is configured (%s), so an option cannot change what the administrator configured; %s is set in the configuration file or with %s",
				name, relayBy, name, strings.Join(settingEnv[name], " or "))
		}
	}
	return nil
}

// setFrom sets the setting name to value, read from the configuration
// file or the environment (from says which), refusing a value that
// cannot be (config).
func (cfg *config) setFrom(name, value, from string) error {
	if _, ok := startTLSModes[value]; name == "starttls" && !ok {
		return fmt.Errorf("%w: %s %q: want never, opportunistic or required", errConfig, from, value)
	}
	if err := cfg.setLong(name, value); err != nil {
		return err // not given twice, not empty: cannot happen
	}
	if cfg.from == nil {
		cfg.from = map[string]string{}
	}
	cfg.from[name] = from
	return nil
}

// sameSetting reports whether an option's value for the setting name
// says what the administrator's does: names of hosts and domains are
// compared without regard to case.
func sameSetting(name, admin, option string) bool {
	if name == "domain" || name == "tls-server-name" {
		return strings.EqualFold(admin, option)
	}
	return admin == option
}
