package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvName is the environment variable that sets flag name:
// K8SECRETS_MOUNT_PATH for --mount-path.
func EnvName(flag string) string {
	return "K8SECRETS_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// setting is one value for a flag from outside the command line.
type setting struct {
	value string
	// origin names where it came from in an error: the variable or the
	// file's key.
	origin string
}

// fillFromEnvAndFile sets every flag the command line left alone from the
// K8SECRETS_* environment, else from the --config file, through the flag's
// own parser (pflag's Value.Set), exactly as if it had been typed: "yes" is
// not a boolean and "300" is not a duration (viper alone would turn them
// into false and 300ns; viper issue 761 and its kin). It returns every
// problem, each wrapping ErrInvalid and naming the variable or key and the
// form expected.
func fillFromEnvAndFile(fs *pflag.FlagSet, env func(string) (string, bool)) []error {
	var problems []error
	cli := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) { cli[f.Name] = f.Changed })
	settings := map[string]setting{}

	file, _ := fs.GetString("config")
	if !cli["config"] {
		if val, ok := env(EnvName("config")); ok {
			file = val
		}
	}
	if file != "" {
		fv := viper.New()
		fv.SetConfigFile(file)
		if err := fv.ReadInConfig(); err != nil {
			return []error{fmt.Errorf("%w: read config file %s: %v", ErrInvalid, file, err)}
		}
		keys := fv.AllKeys()
		sort.Strings(keys)
		for _, k := range keys {
			name := string(normalize(nil, k))
			f := fs.Lookup(name)
			if f == nil || name == "config" {
				problems = append(problems, fmt.Errorf("%w: config file %s: unknown key %q", ErrInvalid, file, k))
				continue
			}
			origin := fmt.Sprintf("config file %s: key %q", file, k)
			val, err := scalar(fv.Get(k), f.Value.Type() == "stringSlice")
			if err != nil {
				problems = append(problems, fmt.Errorf("%w: %s: %v; want %s", ErrInvalid, origin, err, expected(f)))
				continue
			}
			settings[name] = setting{val, origin}
		}
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name == "config" {
			return
		}
		if val, ok := env(EnvName(f.Name)); ok {
			settings[f.Name] = setting{val, EnvName(f.Name)} // the environment wins over the file
		}
	})

	names := make([]string, 0, len(settings))
	for n := range settings {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if cli[n] {
			continue // the command line wins
		}
		s := settings[n]
		if err := fs.Set(n, s.value); err != nil {
			problems = append(problems, fmt.Errorf("%w: %s=%q is not valid for --%s; want %s", ErrInvalid, s.origin, s.value, n, expected(fs.Lookup(n))))
		}
	}
	return problems
}

// scalar renders a value read from a config file as the text the flag's
// parser takes: YAML's 300 becomes "300" (and then fails as a duration, as
// on the command line), a list becomes a comma-separated one.
func scalar(v any, list bool) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case []any:
		if !list {
			return "", fmt.Errorf("a list where one value is expected")
		}
		parts := make([]string, len(x))
		for i, e := range x {
			s, err := scalar(e, false)
			if err != nil {
				return "", err
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	case []string:
		if !list {
			return "", fmt.Errorf("a list where one value is expected")
		}
		return strings.Join(x, ","), nil
	case map[string]any:
		return "", fmt.Errorf("a map where one value is expected")
	}
	return fmt.Sprint(v), nil
}

// expected describes the form a flag's parser accepts.
func expected(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "bool":
		return "true or false"
	case "duration":
		return "a duration with a unit, such as 90s, 5m or 1h30m"
	case "int":
		return "a whole number"
	case "stringSlice":
		return "a comma-separated list"
	}
	return "a string"
}
