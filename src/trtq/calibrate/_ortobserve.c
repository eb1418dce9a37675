/* onnxruntime custom ops that fold calibration statistics inside the forward pass.
 *
 * Exposing observed tensors as graph outputs makes onnxruntime keep every one of them alive (and
 * written to memory) until the run ends, and hands them to Python to bin. These ops instead read
 * each tensor right after it is produced, while it is still in cache, on onnxruntime's own
 * intra-op threads, and fold it into running statistics that Python owns:
 *
 *   trtq.observe::Observe(X) -> Y      Y aliases X (a pass-through: consumers of X read Y)
 *   trtq.observe::ObserveSink(X) -> Z  Z is a 1-element dummy (for tensors nothing else reads)
 *
 * Attributes: `state` the address of the tensor's int64 state row (layout below, allocated and
 * kept alive by trtq.calibrate.ort_observe), `bins` the histogram size (0: amax only, for
 * method max), `channels` (> 0: X is onnxruntime's blocked NCHWc copy of a tensor with that many
 * channels; dim 1 must equal it, or the run fails and trtq falls back to exposing the tensor).
 *
 * The statistics follow collector.py's rule exactly (same binning, same range growth), batch by
 * batch, so results equal StatsCollector's bit for bit. Built as a Python extension only so that
 * setuptools compiles it; onnxruntime loads it with SessionOptions.register_custom_ops_library.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_histkernels.h"
#include "onnxruntime_c_api.h"

enum { OP_API_VERSION = 18 }; /* KernelContext_ParallelFor (17) and output aliasing (18) */

/* State row, int64 words: count, nan_count, amax (double bits), hist_max (double bits),
 * scale (double bits, a float32 value), 3 reserved, then `bins` histogram counts. */
enum { ROW_COUNT = 0, ROW_NAN = 1, ROW_AMAX = 2, ROW_HIST_MAX = 3, ROW_SCALE = 4, ROW_HEADER = 8 };

#define MIN_HIST_MAX ldexp(1.0, -100) /* collector.MIN_HIST_MAX */

static const OrtApi *api = NULL;

static double get_f64(const int64_t *row, int i) {
    double v;
    memcpy(&v, row + i, sizeof v);
    return v;
}

static void set_f64(int64_t *row, int i, double v) { memcpy(row + i, &v, sizeof v); }

/* collector.bin_scale: float32(n / hist_max), lowered an ulp at a time until hist_max maps inside. */
static float bin_scale(double hist_max, int64_t n) {
    float scale = (float)((double)n / hist_max);
    volatile float limit = (float)n, top = (float)hist_max;
    for (int i = 0; i < 4; i++) {
        volatile float product = top * scale;
        if (product <= limit) {
            break;
        }
        scale = nextafterf(scale, 0.0f);
    }
    return scale;
}

/* collector._grow: merge bins 2^shift to 1 and widen the range. */
static void grow(int64_t *row, int64_t n, int shift) {
    int64_t *hist = row + ROW_HEADER;
    if (shift >= 63 || ((int64_t)1 << shift) >= n) {
        int64_t total = 0;
        for (int64_t b = 0; b < n; b++) {
            total += hist[b];
            hist[b] = 0;
        }
        hist[0] = total;
    } else {
        int64_t group = (int64_t)1 << shift;
        for (int64_t g = 0; g * group < n; g++) {
            int64_t total = 0;
            for (int64_t b = g * group; b < (g + 1) * group && b < n; b++) {
                total += hist[b];
            }
            hist[g] = total;
        }
        for (int64_t b = (n + group - 1) / group; b < n; b++) {
            hist[b] = 0;
        }
    }
    double hist_max = get_f64(row, ROW_HIST_MAX) * ldexp(1.0, shift);
    set_f64(row, ROW_HIST_MAX, hist_max);
    set_f64(row, ROW_SCALE, (double)bin_scale(hist_max, n));
}

/* collector._cover: start the range at amax, or double it until it covers amax. */
static void cover(int64_t *row, int64_t n, double amax) {
    double hist_max = get_f64(row, ROW_HIST_MAX);
    if (hist_max == 0.0) {
        hist_max = amax > MIN_HIST_MAX ? amax : MIN_HIST_MAX;
        set_f64(row, ROW_HIST_MAX, hist_max);
        set_f64(row, ROW_SCALE, (double)bin_scale(hist_max, n));
        return;
    }
    int shift = 0;
    while (hist_max < amax) {
        hist_max *= 2.0;
        shift++;
    }
    if (shift) {
        grow(row, n, shift);
    }
}

/* One parallel pass over X, split into chunks that onnxruntime's threads take. */
typedef struct {
    const float *x;
    float *copy_to; /* non-NULL: also copy each chunk there (the output did not alias the input) */
    size_t size, chunk;
    int binning;    /* 1: ceil counts with `scale`; 0: finite amax and NaN/Inf count only */
    float scale;
    size_t m;       /* counts per chunk: bins + 2 */
    int64_t *counts; /* chunks * m */
    float *amax;     /* per chunk */
    int64_t *bad;    /* per chunk: NaN/Inf count (binning: 0/1 flag) */
    int failed;
} Pass;

static void run_chunk(void *user, size_t index) {
    Pass *p = (Pass *)user;
    size_t start = index * p->chunk;
    size_t len = p->size - start < p->chunk ? p->size - start : p->chunk;
    const float *x = p->x + start;
    if (p->binning) {
        Counter c = {NULL, p->counts + index * p->m, p->m, 0};
        c.sub = calloc(4 * c.m, sizeof(uint32_t));
        if (c.sub == NULL) {
            p->failed = 1;
            return;
        }
        int nonfinite = 0;
        p->amax[index] = kernel_fn(best_kernel)(x, len, p->scale, &c, &nonfinite);
        flush(&c);
        free(c.sub);
        p->bad[index] = nonfinite;
    } else {
        float amax = 0.0f;
        int64_t bad = 0;
        for (size_t i = 0; i < len; i++) {
            float a = fabsf(x[i]);
            int finite = a <= FLT_MAX;
            bad += !finite;
            a = finite ? a : 0.0f;
            amax = a > amax ? a : amax;
        }
        p->amax[index] = amax;
        p->bad[index] = bad;
    }
    if (p->copy_to != NULL) {
        memcpy(p->copy_to + start, x, len * sizeof(float));
    }
}

typedef struct {
    int64_t *row;
    int64_t bins;
    int64_t channels;
    int sink;
    int64_t *counts; /* scratch, reused across runs: chunks * (bins + 2) */
    int64_t *total;  /* the chunks' counts summed: bins + 2 (NULL without histogram) */
    float *amax;
    int64_t *bad;
    size_t capacity; /* chunks the scratch holds */
} Kernel;

static OrtStatus *fail(const char *message) { return api->CreateStatus(ORT_FAIL, message); }

/* Run one pass over all chunks (on onnxruntime's thread pool) and reduce it: amax, bad, counts. */
static OrtStatus *pass(OrtKernelContext *context, Kernel *k, Pass *p, float *amax, int64_t *bad, int64_t *counts) {
    size_t chunks = (p->size + p->chunk - 1) / p->chunk;
    p->m = (size_t)k->bins + 2;
    p->counts = k->counts;
    p->amax = k->amax;
    p->bad = k->bad;
    p->failed = 0;
    if (p->binning) {
        memset(k->counts, 0, chunks * p->m * sizeof(int64_t));
    }
    OrtStatus *status = chunks > 1 ? api->KernelContext_ParallelFor(context, run_chunk, chunks, 0, p) : NULL;
    if (status != NULL) {
        api->ReleaseStatus(status);
        for (size_t i = 0; i < chunks; i++) { /* no thread pool: run here */
            run_chunk(p, i);
        }
    } else if (chunks == 1) {
        run_chunk(p, 0);
    }
    if (p->failed) {
        return fail("trtq observer: out of memory");
    }
    float a = 0.0f;
    int64_t b = 0;
    for (size_t i = 0; i < chunks; i++) {
        a = k->amax[i] > a ? k->amax[i] : a;
        b += k->bad[i];
    }
    *amax = a;
    *bad = b;
    if (p->binning) {
        memset(counts, 0, p->m * sizeof(int64_t));
        for (size_t i = 0; i < chunks; i++) {
            const int64_t *part = k->counts + i * p->m;
            for (size_t j = 0; j < p->m; j++) {
                counts[j] += part[j];
            }
        }
    }
    return NULL;
}

/* Fold ceil counts into the histogram: ceil value c goes to bin c - 1, exact zeros to bin 0. */
static void fold(int64_t *row, int64_t n, const int64_t *counts) {
    int64_t *hist = row + ROW_HEADER;
    hist[0] += counts[0];
    for (int64_t b = 0; b < n; b++) {
        hist[b] += counts[b + 1];
    }
}

static void update_amax(int64_t *row, float amax) {
    if ((double)amax > get_f64(row, ROW_AMAX)) {
        set_f64(row, ROW_AMAX, (double)amax);
    }
}

/* One batch of tensor X into the state row: collector.StatsCollector.update, in C. */
static OrtStatus *observe(OrtKernelContext *context, Kernel *k, const float *x, float *copy_to, size_t size) {
    int64_t *row = k->row, n = k->bins;
    size_t chunk = (size_t)1 << 16;
    size_t limit = 256;
    if ((size + chunk - 1) / chunk > limit) {
        chunk = (size + limit - 1) / limit;
    }
    size_t chunks = (size + chunk - 1) / chunk;
    if (chunks > k->capacity) {
        free(k->counts);
        free(k->amax);
        free(k->bad);
        k->counts = n ? malloc(chunks * (size_t)(n + 2) * sizeof(int64_t)) : NULL;
        k->amax = malloc(chunks * sizeof(float));
        k->bad = malloc(chunks * sizeof(int64_t));
        k->capacity = chunks;
        if ((n && k->counts == NULL) || k->amax == NULL || k->bad == NULL) {
            k->capacity = 0;
            return fail("trtq observer: out of memory");
        }
    }
    int64_t *counts = k->total;
    Pass p = {x, copy_to, size, chunk, 0, 0.0f, 0, NULL, NULL, NULL, 0};
    float amax;
    int64_t bad;
    OrtStatus *status;
    if (n && get_f64(row, ROW_HIST_MAX) != 0.0) { /* the common case: one fused pass in range */
        p.binning = 1;
        p.scale = (float)get_f64(row, ROW_SCALE);
        status = pass(context, k, &p, &amax, &bad, counts);
        if (status != NULL) {
            return status;
        }
        if (bad == 0 && counts[n + 1] == 0) {
            update_amax(row, amax);
            row[ROW_COUNT] += (int64_t)size;
            fold(row, n, counts);
            return NULL;
        }
        p.copy_to = NULL;
    }
    p.binning = 0; /* general path: finite amax and NaN/Inf count, then grow the range and bin */
    status = pass(context, k, &p, &amax, &bad, counts);
    p.copy_to = NULL;
    if (status != NULL) {
        return status;
    }
    row[ROW_NAN] += bad;
    int64_t kept = (int64_t)size - bad;
    if (kept == 0) {
        return NULL;
    }
    update_amax(row, amax);
    row[ROW_COUNT] += kept;
    if (!n) {
        return NULL;
    }
    if (amax == 0.0f) {
        row[ROW_HEADER] += kept;
        return NULL;
    }
    cover(row, n, (double)amax);
    p.binning = 1;
    p.scale = (float)get_f64(row, ROW_SCALE);
    status = pass(context, k, &p, &amax, &bad, counts);
    if (status == NULL) {
        fold(row, n, counts); /* counts[n + 1] holds only the NaN/Inf values, already counted */
    }
    return status;
}

static OrtStatus *compute(void *kernel, OrtKernelContext *context) {
    Kernel *k = (Kernel *)kernel;
    const OrtValue *input = NULL;
    OrtTensorTypeAndShapeInfo *info = NULL;
    size_t ndim = 0, size = 0;
    int64_t dims[16];
    OrtStatus *status = api->KernelContext_GetInput(context, 0, &input);
    if (status == NULL) status = api->GetTensorTypeAndShape(input, &info);
    if (status == NULL) status = api->GetDimensionsCount(info, &ndim);
    if (status == NULL && ndim > 16) status = fail("trtq observer: tensor has more than 16 dimensions");
    if (status == NULL) status = api->GetDimensions(info, dims, ndim);
    if (status == NULL) status = api->GetTensorShapeElementCount(info, &size);
    if (info != NULL) api->ReleaseTensorTypeAndShapeInfo(info);
    if (status != NULL) return status;
    if (k->channels > 0 && (ndim < 2 || dims[1] != k->channels)) {
        char message[160];
        snprintf(message, sizeof message, "trtq observer: blocked tensor has dim 1 = %lld, expected %lld channels",
                 ndim < 2 ? -1LL : (long long)dims[1], (long long)k->channels);
        return fail(message);
    }
    void *x = NULL, *y = NULL;
    OrtValue *output = NULL;
    int64_t one = 1;
    status = api->GetTensorMutableData((OrtValue *)input, &x);
    if (status == NULL) status = api->KernelContext_GetOutput(context, 0, k->sink ? &one : dims, k->sink ? 1 : ndim, &output);
    if (status == NULL) status = api->GetTensorMutableData(output, &y);
    if (status != NULL) return status;
    if (k->sink) {
        *(float *)y = 0.0f;
    }
    if (size == 0) {
        return NULL;
    }
    return observe(context, k, (const float *)x, !k->sink && y != x ? (float *)y : NULL, size);
}

static void destroy(void *kernel) {
    Kernel *k = (Kernel *)kernel;
    free(k->counts);
    free(k->total);
    free(k->amax);
    free(k->bad);
    free(k);
}

static OrtStatus *create(const OrtCustomOp *op, const OrtApi *unused, const OrtKernelInfo *info, void **out,
                         int sink) {
    int64_t state = 0, bins = 0, channels = 0;
    OrtStatus *status = api->KernelInfoGetAttribute_int64(info, "state", &state);
    if (status == NULL) status = api->KernelInfoGetAttribute_int64(info, "bins", &bins);
    if (status == NULL) status = api->KernelInfoGetAttribute_int64(info, "channels", &channels);
    if (status != NULL) return status;
    if (state == 0 || bins < 0) return fail("trtq observer: bad state or bins attribute");
    Kernel *k = calloc(1, sizeof(Kernel));
    if (k == NULL) return fail("trtq observer: out of memory");
    if (bins > 0 && (k->total = malloc((size_t)(bins + 2) * sizeof(int64_t))) == NULL) {
        free(k);
        return fail("trtq observer: out of memory");
    }
    k->row = (int64_t *)(intptr_t)state;
    k->bins = bins;
    k->channels = channels;
    k->sink = sink;
    *out = k;
    return NULL;
}

static OrtStatus *ORT_API_CALL create_observe(const OrtCustomOp *op, const OrtApi *a, const OrtKernelInfo *info,
                                              void **out) {
    return create(op, a, info, out, 0);
}

static OrtStatus *ORT_API_CALL create_sink(const OrtCustomOp *op, const OrtApi *a, const OrtKernelInfo *info,
                                           void **out) {
    return create(op, a, info, out, 1);
}

static OrtStatus *ORT_API_CALL compute_v2(void *kernel, OrtKernelContext *context) { return compute(kernel, context); }
static void ORT_API_CALL destroy_kernel(void *kernel) { destroy(kernel); }
static const char *ORT_API_CALL name_observe(const OrtCustomOp *op) { return "Observe"; }
static const char *ORT_API_CALL name_sink(const OrtCustomOp *op) { return "ObserveSink"; }
static const char *ORT_API_CALL provider(const OrtCustomOp *op) { return "CPUExecutionProvider"; }
static ONNXTensorElementDataType ORT_API_CALL float_type(const OrtCustomOp *op, size_t i) {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t ORT_API_CALL one_count(const OrtCustomOp *op) { return 1; }
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp *op, size_t i) {
    return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType ORT_API_CALL memory(const OrtCustomOp *op, size_t i) { return OrtMemTypeDefault; }
static int ORT_API_CALL zero(const OrtCustomOp *op) { return 0; }
static int ORT_API_CALL start_version(const OrtCustomOp *op) { return 1; }
static int ORT_API_CALL end_version(const OrtCustomOp *op) { return 1; }

static size_t ORT_API_CALL alias_first(int **inputs, int **outputs) {
    *inputs = malloc(sizeof(int));
    *outputs = malloc(sizeof(int));
    if (*inputs == NULL || *outputs == NULL) {
        free(*inputs);
        free(*outputs);
        *inputs = *outputs = NULL;
        return 0;
    }
    (*inputs)[0] = 0;
    (*outputs)[0] = 0;
    return 1;
}

static size_t ORT_API_CALL no_alias(int **inputs, int **outputs) {
    *inputs = *outputs = NULL;
    return 0;
}

static void ORT_API_CALL release_alias(int *inputs, int *outputs) {
    free(inputs);
    free(outputs);
}

/* Observe's output has its input's type and shape. onnxruntime's memory planner lets a node write
 * its output over an input (a Conv with a fused residual Add over the residual) only where both
 * shapes are known and equal; without this, every such Conv reading an observed tensor allocated
 * a fresh output and copied the residual into it. */
static OrtStatusPtr ORT_API_CALL infer_observe(const OrtCustomOp *op, OrtShapeInferContext *context) {
    OrtTensorTypeAndShapeInfo *info = NULL; /* owned by the context */
    size_t ndim = 0;
    int64_t dims[16];
    const char *names[16];
    OrtStatus *status = api->ShapeInferContext_GetInputTypeShape(context, 0, &info);
    if (status == NULL) status = api->GetDimensionsCount(info, &ndim);
    if (status != NULL || ndim == 0 || ndim > 16) return status; /* 0: rank unknown (or a scalar) */
    status = api->GetDimensions(info, dims, ndim);
    if (status == NULL) status = api->GetSymbolicDimensions(info, names, ndim);
    if (status != NULL) return status;
    for (size_t i = 0; i < ndim; i++) {
        if (dims[i] < 0 && (names[i] == NULL || names[i][0] == '\0')) {
            return NULL; /* an unknown dim would be written as -1: leave the output's shape unknown */
        }
    }
    return api->ShapeInferContext_SetOutputTypeShape(context, 0, info);
}

/* ObserveSink's output: one float32. */
static OrtStatusPtr ORT_API_CALL infer_sink(const OrtCustomOp *op, OrtShapeInferContext *context) {
    OrtTensorTypeAndShapeInfo *info = NULL;
    const int64_t one = 1;
    OrtStatus *status = api->CreateTensorTypeAndShapeInfo(&info);
    if (status == NULL) status = api->SetTensorElementType(info, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
    if (status == NULL) status = api->SetDimensions(info, &one, 1);
    if (status == NULL) status = api->ShapeInferContext_SetOutputTypeShape(context, 0, info);
    if (info != NULL) {
        api->ReleaseTensorTypeAndShapeInfo(info);
    }
    return status;
}

static OrtCustomOp make_op(int sink) {
    OrtCustomOp op;
    memset(&op, 0, sizeof op);
    op.version = OP_API_VERSION;
    op.GetName = sink ? name_sink : name_observe;
    op.GetExecutionProviderType = provider;
    op.GetInputType = float_type;
    op.GetInputTypeCount = one_count;
    op.GetOutputType = float_type;
    op.GetOutputTypeCount = one_count;
    op.KernelDestroy = destroy_kernel;
    op.GetInputCharacteristic = required;
    op.GetOutputCharacteristic = required;
    op.GetInputMemoryType = memory;
    op.GetVariadicInputMinArity = zero;
    op.GetVariadicInputHomogeneity = zero;
    op.GetVariadicOutputMinArity = zero;
    op.GetVariadicOutputHomogeneity = zero;
    op.CreateKernelV2 = sink ? create_sink : create_observe;
    op.KernelComputeV2 = compute_v2;
    op.InferOutputShapeFn = sink ? infer_sink : infer_observe;
    op.GetStartVersion = start_version;
    op.GetEndVersion = end_version;
    op.GetMayInplace = no_alias;
    op.ReleaseMayInplace = release_alias;
    op.GetAliasMap = sink ? no_alias : alias_first;
    op.ReleaseAliasMap = release_alias;
    return op;
}

static OrtCustomOp observe_op, sink_op;
static OrtCustomOpDomain *domain = NULL; /* lives as long as the process: sessions keep pointers to it */

#ifdef _WIN32
#define TRTQ_EXPORT __declspec(dllexport)
#else
#define TRTQ_EXPORT __attribute__((visibility("default")))
#endif

/* Entry point onnxruntime calls when SessionOptions.register_custom_ops_library loads this file. */
TRTQ_EXPORT OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
    if (api == NULL) {
        const OrtApi *found = base->GetApi(OP_API_VERSION);
        if (found == NULL) {
            return NULL; /* an onnxruntime older than 1.18: no ops registered, the session then fails to load */
        }
        api = found;
        init_kernels();
    }
    if (domain == NULL) {
        observe_op = make_op(0);
        sink_op = make_op(1);
        OrtStatus *status = api->CreateCustomOpDomain("trtq.observe", &domain);
        if (status == NULL) status = api->CustomOpDomain_Add(domain, &observe_op);
        if (status == NULL) status = api->CustomOpDomain_Add(domain, &sink_op);
        if (status != NULL) {
            domain = NULL;
            return status;
        }
    }
    return api->AddCustomOpDomain(options, domain);
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ortobserve",
                                    "onnxruntime custom ops for calibration (load the file, not the module)", -1,
                                    NULL};

PyMODINIT_FUNC PyInit__ortobserve(void) { return PyModule_Create(&module); }
