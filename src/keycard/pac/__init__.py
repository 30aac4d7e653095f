"""Policy as code: a YAML/JSON description of an organization, planned and applied over Google's APIs."""
