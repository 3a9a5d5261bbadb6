package apitest

import "slices"

// VerbGroups splits a Role rule's verbs into what an "enough and no more"
// test removes together: list and watch as one (client-go's informers
// stream their initial list over a watch, and without watch the reflector
// lists again and again, so either alone passes every scenario, only
// slower), every other verb alone.
func VerbGroups(verbs []string) [][]string {
	var out [][]string
	pair := slices.Contains(verbs, "list") && slices.Contains(verbs, "watch")
	if pair {
		out = append(out, []string{"list", "watch"})
	}
	for _, v := range verbs {
		if pair && (v == "list" || v == "watch") {
			continue
		}
		out = append(out, []string{v})
	}
	return out
}
