# Sourced by the device scripts under docs/results/gpu-h200*/ (from the repository root). On a bare lent GPU box
# (LOCAL unset) it unpacks the carried glvnd loaders (.gl), installs the carried wheels the image lacks (.whl) into
# /tmp/site and points MuJoCo's EGL at the NVIDIA driver; with LOCAL=1 (a rehearsal on the CPU box) it only sets the
# environment every run shares.
# The scripts ran on the devices with these lines inline; they were folded into this file afterwards, unchanged.
if [ -z "$LOCAL" ]; then
  for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD MUJOCO_GL=egl
  vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f $vendor ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
fi
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
