# Google Cloud IAM, in Rego (run by regorus through opa-eval). data holds the hierarchy
# (resource -> parent), the group graph (member -> groups directly holding it), roles
# (role -> {permission: true}; DISABLED roles absent), allow bindings and deny rules per node.
package iam

import rego.v1

default allow := false

ancestry := graph.reachable(data.parents, {input.resource}) # every node is in data.parents

principal_keys contains k if some k in graph.reachable(data.group_parents, {input.principal})

principal_keys contains input.principal

principal_keys contains "allAuthenticatedUsers"

principal_keys contains "allUsers"

principal_keys contains concat("", ["domain:", split(input.principal, "@")[1]]) if startswith(input.principal, "user:")

now_ns := time.parse_rfc3339_ns(input.time)

cond_ok(c) if c == null

cond_ok(c) if {
	c.kind == "time"
	time_holds(c.op, now_ns, c.ns)
}

cond_ok(c) if {
	c.kind == "prefix"
	startswith(input.resource_name, c.value)
}

time_holds("<", a, b) if a < b

time_holds("<=", a, b) if a <= b

time_holds(">", a, b) if a > b

time_holds(">=", a, b) if a >= b

denied if {
	some node in ancestry
	some rule in data.deny[node]
	rule.permissions[input.permission]
	some p in rule.principals
	p in principal_keys
	not excepted(rule)
	cond_ok(rule.cond)
}

excepted(rule) if {
	some e in rule.exceptions
	e in principal_keys
}

granted if {
	some node in ancestry
	some b in data.bindings[node]
	data.roles[b.role][input.permission]
	some m in b.members
	m in principal_keys
	cond_ok(b.cond)
}

allow if {
	granted
	not denied
}
