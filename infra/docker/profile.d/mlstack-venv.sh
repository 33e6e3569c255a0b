# Puts the image's venv first on PATH in login shells, which reset PATH from /etc/profile before they
# read /etc/profile.d: KubeRay starts Ray with `bash -lc "... ray start ..."` before KubeRay 1.4.0 or
# with the operator's ENABLE_LOGIN_SHELL=true (infra/k8s/components/ray).
PATH="/app/.venv/bin:$PATH"
export PATH
