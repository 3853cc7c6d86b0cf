#!/bin/sh
# Slims the image's virtualenv after the dependencies are installed: drops what only a build, a
# test run or a C API user needs. Usage: slim-venv.sh /opt/venv
set -eu
venv=$1
site=$(echo "$venv"/lib/python3.*/site-packages)

# llama-cpp-python also installs its CMake output at the top of site-packages (a second copy of
# the shared libraries, headers, CMake and pkg-config files); the package itself loads its
# libraries from llama_cpp/lib. Remove exactly the files its RECORD lists there.
for record in "$site"/llama_cpp_python-*.dist-info/RECORD; do
  [ -f "$record" ] || continue
  cut -d, -f1 "$record" | grep -E '^(lib|include)/' | while read -r f; do rm -f "$site/$f"; done
done
rm -rf "$site/lib/cmake" "$site/lib/pkgconfig"
rmdir "$site/lib" "$site/include" 2>/dev/null || true

# In llama_cpp/lib each library is stored under three names (wheels cannot hold symlinks): keep
# the fully versioned file and link the other two names to it.
if [ -d "$site/llama_cpp/lib" ]; then
  cd "$site/llama_cpp/lib"
  for real in *.so.*.*; do
    [ -f "$real" ] || continue
    soname=$(printf '%s' "$real" | sed -E 's/^(.*\.so\.[0-9]+)\..*$/\1/')
    for alias in "${real%%.so.*}.so" "$soname"; do
      if [ -f "$alias" ] && [ ! -L "$alias" ] && cmp -s "$alias" "$real"; then
        ln -sf "$real" "$alias"
      fi
    done
  done
  cd - >/dev/null
fi

# onnxruntime: the Python binding is self-contained (it does not load libonnxruntime.so, which
# is for C API users); transformers/, tools/, quantization/ and datasets/ are offline tooling.
rm -rf "$site"/onnxruntime/capi/libonnxruntime.so.* "$site/onnxruntime/transformers" \
       "$site/onnxruntime/tools" "$site/onnxruntime/quantization" "$site/onnxruntime/datasets"
rm -f "$venv/bin/onnxruntime_test"

# PyAV (~100 MB with its FFmpeg libraries): faster-whisper needs it only to decode audio files
# (`decode_audio`), but imports it when faster_whisper is imported. Phonebooth hands Whisper
# numpy arrays and never decodes a file, so a placeholder takes its place that says so if
# anything ever uses it.
if [ -d "$site/av" ]; then
  "$venv/bin/pip" uninstall -y -q av
  mkdir "$site/av"
  cat > "$site/av/__init__.py" <<'PY'
"""Placeholder for PyAV, removed from the Phonebooth image to save ~100 MB: faster-whisper
imports it, but Phonebooth passes it audio as arrays and never decodes a file."""


def __getattr__(name: str) -> object:
    raise ImportError(f"PyAV is not installed in this image (av.{name} was asked for): "
                      "decoding audio files needs `pip install av`")
PY
fi

# hf_xet: huggingface_hub's Xet storage client, for downloads from the model hub (models here
# come verified from the package index, and Whisper loads them from a local path).
"$venv/bin/pip" uninstall -y -q hf-xet 2>/dev/null || true

# setuptools and wheel: build tools. The app's own wheel is installed with pip, which needs
# neither, and nothing imports them at run time. pip stays: model files are downloaded with it.
"$venv/bin/pip" uninstall -y -q setuptools wheel 2>/dev/null || true

# piper-tts ships diacritisation models for Hebrew (nakdimon, 21 MB) and Arabic (libtashkeel,
# 5 MB) text. Piper loads each only when a voice of that language speaks (a Hebrew phonemizer,
# or an Arabic voice with tashkeel on); the image's voice is English. A Hebrew or Arabic voice
# needs `pip install --force-reinstall --no-deps piper-tts` first.
rm -f "$site/piper/hebrew/nakdimon.onnx" "$site/piper/tashkeel/model.onnx"

# botocore carries the API models of every AWS service (~29 MB); recordings only talk to S3
# (and STS/SSO when credentials come from a role or a profile). Keep those and the shared files.
if [ -d "$site/botocore/data" ]; then
  for d in "$site"/botocore/data/*/; do
    case "$(basename "$d")" in
      s3|sts|sso|sso-oidc) ;;
      *) rm -rf "$d" ;;
    esac
  done
fi

# googleapis-common-protos: the OTLP exporter reads google.rpc (and protobuf itself); the other
# Google API definitions are never imported.
for d in api type longrunning cloud logging gapic; do rm -rf "$site/google/$d"; done

# OpenTelemetry's incubating semantic conventions (~1.5 MB of attribute names): the SDK reads
# only its own otel_attributes / otel_metrics modules from there.
inc="$site/opentelemetry/semconv/_incubating"
if [ -d "$inc" ]; then
  find "$inc/attributes" "$inc/metrics" -maxdepth 1 -type f -name '*.py' \
    ! -name '__init__.py' ! -name 'otel_attributes.py' ! -name 'otel_metrics.py' -delete
  find "$inc" -type d -name __pycache__ -prune -exec rm -rf {} +
fi

# pip runs once, to fetch the model files at the first start: its byte code (8 MB) is not worth
# carrying, it compiles what it needs then. (The Dockerfile removes it once more after the app's
# own wheel is installed, since running pip writes it again.)
find "$site/pip" -type d -name __pycache__ -prune -exec rm -rf {} +

# Test suites.
find "$site" -type d -name tests -prune -exec rm -rf {} +

# Debug symbols. Libraries that auditwheel grafted (*.libs/) or patched (they carry a run path)
# are left alone: stripping a patchelf-edited file breaks it.
find "$site" -type f -name '*.so*' ! -path '*.libs/*' | while read -r f; do
  if ! readelf -d "$f" 2>/dev/null | grep -q 'R[UN]*PATH'; then
    strip --strip-unneeded "$f"
  fi
done

# CTranslate2's extension module ships with its DWARF debug information (66 of its 68 MB). It
# carries a run path (patchelf), so the loop above leaves it alone; --strip-debug removes only
# the .debug_* sections and leaves the symbol table and the run path as they are (checked:
# the module still imports and transcribes in the image).
for f in "$site"/ctranslate2/_ext*.so; do
  [ -f "$f" ] && strip --strip-debug "$f"
done
