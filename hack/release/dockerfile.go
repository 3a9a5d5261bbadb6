package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// dockerfile is what a FROM-scratch Dockerfile of this project says about its
// image: the release builds the same image without Docker, so it reads the
// Dockerfile instead of repeating it, and refuses any instruction it cannot
// reproduce (a RUN, a non-scratch base) rather than build a different image.
type dockerfile struct {
	Path       string
	Labels     map[string]string
	Copies     []copyOp
	User       string
	Entrypoint []string
}

// copyOp is one COPY SRC DST.
type copyOp struct {
	Src, Dst string
}

var labelPair = regexp.MustCompile(`([A-Za-z0-9_.\-]+)="([^"]*)"`)

// parseDockerfile reads path, with ${NAME} of its ARGs replaced by args.
func parseDockerfile(path string, args map[string]string) (dockerfile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return dockerfile{}, err
	}
	df := dockerfile{Path: path, Labels: map[string]string{}}
	var lines []string
	cont := ""
	for _, l := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(l)
		if cont == "" && (t == "" || strings.HasPrefix(t, "#")) {
			continue
		}
		if strings.HasSuffix(t, `\`) {
			cont += strings.TrimSuffix(t, `\`) + " "
			continue
		}
		lines = append(lines, cont+t)
		cont = ""
	}
	sawFrom := false
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		rest = strings.TrimSpace(rest)
		for k, v := range args {
			rest = strings.ReplaceAll(rest, "${"+k+"}", v)
		}
		switch strings.ToUpper(instr) {
		case "FROM":
			if rest != "scratch" {
				return df, fmt.Errorf("%s: FROM %s: the release builds FROM-scratch images only; build this one with docker buildx", path, rest)
			}
			sawFrom = true
		case "ARG":
			// Values come from args (VERSION); defaults do not matter here.
		case "LABEL":
			for _, m := range labelPair.FindAllStringSubmatch(rest, -1) {
				df.Labels[m[1]] = m[2]
			}
		case "COPY":
			f := strings.Fields(rest)
			if len(f) != 2 || strings.HasPrefix(f[0], "--") {
				return df, fmt.Errorf("%s: COPY %s: only COPY SRC DST is supported; teach hack/release/dockerfile.go the rest", path, rest)
			}
			df.Copies = append(df.Copies, copyOp{Src: f[0], Dst: f[1]})
		case "USER":
			df.User = rest
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &df.Entrypoint); err != nil {
				return df, fmt.Errorf("%s: ENTRYPOINT %s: want the exec (JSON) form: %v", path, rest, err)
			}
		default:
			return df, fmt.Errorf("%s: %s is not supported by the release build; teach hack/release/dockerfile.go to reproduce it", path, instr)
		}
	}
	if !sawFrom || df.User == "" || len(df.Entrypoint) == 0 || len(df.Copies) == 0 {
		return df, fmt.Errorf("%s: want FROM scratch, COPY, USER and ENTRYPOINT", path)
	}
	return df, nil
}
