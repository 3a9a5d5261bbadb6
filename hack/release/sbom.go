package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
)

// binarySBOM writes the CycloneDX SBOM of the Go binary bin to out, made by
// cyclonedx-gomod from the module list the Go linker embedded in it (what
// `go version -m` prints): the modules actually linked, not go.mod's graph.
// No serial number or time stamp, so that one commit gives the same file.
func binarySBOM(tool, bin, out, version string) error {
	cmd := exec.Command(tool, "bin", "-json", "-noserial", "-notimestamp", "-output", out, "-version", version, bin)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s bin %s: %v\n%s", tool, bin, err, b)
	}
	return nil
}

// imageSBOM writes the SBOM of one platform's image: the SBOM of the binary
// it holds (its only content), under a metadata component that names the
// image by repository, tag and manifest digest.
func imageSBOM(tool, bin, out, version, repo, digest, platform string) error {
	if err := binarySBOM(tool, bin, out, version); err != nil {
		return err
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	var bom map[string]any
	if err := json.Unmarshal(b, &bom); err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	meta, _ := bom["metadata"].(map[string]any)
	if meta == nil {
		return fmt.Errorf("%s: no metadata", out)
	}
	binary, _ := meta["component"].(map[string]any)
	if binary == nil {
		return fmt.Errorf("%s: no metadata.component", out)
	}
	ref := "pkg:oci/" + repo + "@" + digest + "?tag=" + version
	meta["component"] = map[string]any{
		"type":        "container",
		"bom-ref":     ref,
		"name":        repo,
		"version":     version,
		"purl":        ref,
		"description": "image " + repo + ":" + version + " for " + platform + " (manifest " + digest + ")",
	}
	comps, _ := bom["components"].([]any)
	bom["components"] = append([]any{binary}, comps...)
	deps, _ := bom["dependencies"].([]any)
	bom["dependencies"] = append([]any{map[string]any{"ref": ref, "dependsOn": []any{binary["bom-ref"]}}}, deps...)
	b, err = json.MarshalIndent(bom, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(out, append(b, '\n'), 0o644)
}
