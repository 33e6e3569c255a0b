# Puts the image's venv first on PATH in login shells, which reset PATH from /etc/profile before they
# read /etc/profile.d: KubeRay starts Ray with `bash -lc "... ray start ..."` (infra/k8s/components/ray).
PATH="/app/.venv/bin:$PATH"
export PATH
