// The stock side of `cktrace bench stock`: a plain decode loop over the
// llama.cpp C API, the way llama.cpp's `simple` example drives it, built
// against the pinned llama.cpp compiled without cktrace's patches and with
// llama.cpp's own CMake defaults. It measures exactly what `cktrace run`
// reports as its decode speed: the wall time of the single-token
// llama_decode calls after the prompt, sampling (greedy) not included.
//
// usage: stock_driver MODEL THREADS N_DECODE N_CTX FLASH_ATTN PROMPT
//   FLASH_ATTN: auto | on | off (llama.cpp's default is auto)
// prints one line: `decode <steps> <seconds> <tok/s>`

#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static void quiet(enum ggml_log_level level, const char * text, void * user) {
    (void) user;
    if (level >= GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

static bool no_progress(float progress, void * user) {
    (void) progress;
    (void) user;
    return true;
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL THREADS N_DECODE N_CTX auto|on|off PROMPT\n", argv[0]);
        return 2;
    }
    const char * path     = argv[1];
    const int    threads  = atoi(argv[2]);
    const int    n_decode = atoi(argv[3]);
    const int    n_ctx    = atoi(argv[4]);
    const char * fa       = argv[5];
    const char * prompt   = argv[6];

    llama_log_set(quiet, NULL);
    ggml_backend_load_all();

    struct llama_model_params mp = llama_model_default_params();
    mp.progress_callback = no_progress;
    struct llama_model * model = llama_model_load_from_file(path, mp);
    if (model == NULL) {
        fprintf(stderr, "stock_driver: cannot load %s\n", path);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    const int n_prompt = -llama_tokenize(vocab, prompt, (int) strlen(prompt), NULL, 0, true, true);
    llama_token * toks = malloc(sizeof(llama_token) * (size_t) (n_prompt > 0 ? n_prompt : 1));
    if (llama_tokenize(vocab, prompt, (int) strlen(prompt), toks, n_prompt, true, true) < 0) {
        fprintf(stderr, "stock_driver: cannot tokenize the prompt\n");
        return 1;
    }

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = (uint32_t) n_ctx;
    cp.n_batch         = (uint32_t) n_ctx;
    cp.n_ubatch        = (uint32_t) n_ctx;
    cp.n_threads       = threads;
    cp.n_threads_batch = threads;
    cp.no_perf         = false;
    if (strcmp(fa, "on") == 0) {
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    } else if (strcmp(fa, "off") == 0) {
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    } else {
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    }
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == NULL) {
        fprintf(stderr, "stock_driver: cannot create a context\n");
        return 1;
    }

    struct llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    if (llama_decode(ctx, llama_batch_get_one(toks, n_prompt)) != 0) {
        fprintf(stderr, "stock_driver: llama_decode failed on the prompt\n");
        return 1;
    }
    double decode_s = 0.0;
    for (int i = 0; i < n_decode; i++) {
        llama_token tok = llama_sampler_sample(smpl, ctx, -1);
        const double t = now_s();
        if (llama_decode(ctx, llama_batch_get_one(&tok, 1)) != 0) {
            fprintf(stderr, "stock_driver: llama_decode failed at step %d\n", i + 1);
            return 1;
        }
        decode_s += now_s() - t;
    }
    printf("decode %d %.6f %.3f\n", n_decode, decode_s, (double) n_decode / decode_s);

    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    free(toks);
    return 0;
}
