// The one header bindgen reads: llama.cpp's public API, gguf and the ggml CPU
// backend (for the trace hook that our patch series adds).
#include "llama.h"
#include "gguf.h"
#include "ggml.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
