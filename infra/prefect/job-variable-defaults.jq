# The base job template with the defaults of some of its variables replaced by the values in a JSON
# object: how an overlay's work pool gets its own settings without a second copy of the template
# (a pool's defaults apply to every flow run of the pool; `prefect deploy --all` cannot set job
# variables for several deployments at once). Usage, as in docs/kubernetes.md:
#   jq --slurpfile variables infra/k8s/overlays/ray/flow-run-job-variables.json \
#     -f infra/prefect/job-variable-defaults.jq infra/prefect/k8s-base-job-template.json
# A name the template does not declare is an error: Prefect would ignore it silently.
$variables[0] as $defaults
| (($defaults | keys) - (.variables.properties | keys)) as $unknown
| if ($unknown | length) > 0
  then error("not variables of the job template: \($unknown | join(", "))")
  else .
  end
| reduce ($defaults | to_entries[]) as $entry (.; .variables.properties[$entry.key].default = $entry.value)
