package main

import (
	"bytes"
	"os"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// krewPlugin is krew's Plugin manifest (krew.googlecontainertools.github.com/v1alpha2),
// the fields krew-index asks for.
type krewPlugin struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec krewSpec `yaml:"spec"`
}

type krewSpec struct {
	Version          string         `yaml:"version"`
	Homepage         string         `yaml:"homepage"`
	ShortDescription string         `yaml:"shortDescription"`
	Description      string         `yaml:"description"`
	Platforms        []krewPlatform `yaml:"platforms"`
}

type krewPlatform struct {
	Selector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	} `yaml:"selector"`
	URI    string     `yaml:"uri"`
	SHA256 string     `yaml:"sha256"`
	Bin    string     `yaml:"bin"`
	Files  []krewFile `yaml:"files"`
}

type krewFile struct {
	From string `yaml:"from"`
	To   string `yaml:"to"`
}

// krewArchive is one kubectl-k8secrets archive the manifest lists.
type krewArchive struct {
	OS, Arch, File, SHA256 string
}

var semver = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)

// krewVersion is version as krew wants it (v-prefixed semver): a build
// between tags (git describe gives "fe78bf9" or "v1.2.0-3-gfe78bf9-dirty")
// becomes a pre-release of v0.0.0.
func krewVersion(version string) string {
	if semver.MatchString(version) {
		return version
	}
	return "v0.0.0-" + strings.Trim(regexp.MustCompile(`[^0-9A-Za-z-]+`).ReplaceAllString(version, "-"), "-")
}

const krewDescription = `Mounts a Secret into the running Deployments, StatefulSets and DaemonSets
that match a selector, with a sidecar that reloads the app in place when the
Secret changes: every change is dry-run first, rolled out one workload at a
time and rolled back on failure. Later Secret updates need no rollout.
  kubectl k8secrets inject -n shop -l app=web --secret db-creds
  kubectl k8secrets status -n shop
  kubectl k8secrets refresh -n shop --secret db-creds
`

// writeKrewManifest writes the krew manifest of archives (downloadable under
// baseURL) to path.
func writeKrewManifest(path, version, baseURL string, archives []krewArchive) error {
	p := krewPlugin{APIVersion: "krew.googlecontainertools.github.com/v1alpha2", Kind: "Plugin"}
	p.Metadata.Name = "k8secrets"
	p.Spec = krewSpec{
		Version:          krewVersion(version),
		Homepage:         "https://github.com/k8secrets/k8secrets",
		ShortDescription: "Mount Secrets into workloads, reload in place", // krew-index: under 50 characters
		Description:      krewDescription,
	}
	for _, a := range archives {
		kp := krewPlatform{
			URI:    strings.TrimSuffix(baseURL, "/") + "/" + a.File,
			SHA256: a.SHA256,
			Bin:    krewBin,
			Files:  []krewFile{{From: krewBin, To: "."}, {From: "LICENSE", To: "."}},
		}
		kp.Selector.MatchLabels = map[string]string{"os": a.OS, "arch": a.Arch}
		p.Spec.Platforms = append(p.Spec.Platforms, kp)
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2) // as krew-index's manifests
	if err := enc.Encode(p); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// readKrewManifest parses the manifest at path.
func readKrewManifest(path string) (krewPlugin, error) {
	var p krewPlugin
	b, err := os.ReadFile(path)
	if err != nil {
		return p, err
	}
	return p, yaml.Unmarshal(b, &p)
}

// krewBin is the plugin's executable: kubectl runs `kubectl k8secrets` as
// kubectl-k8secrets, the Job's binary under that name.
const krewBin = "kubectl-k8secrets"
