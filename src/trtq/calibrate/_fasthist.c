/* Fused statistics pass for the calibration collector (optional; numpy fallback in collector.py).
 *
 * ceil_counts(values, scale, counts[, kernel]) -> (amax, nonfinite)
 *
 * For every float32 x in `values`: a = |x|, c = ceil(min(a * scale, n + 1)) where
 * n = len(counts) - 2, and counts[c] += 1. So counts[0] holds exact zeros, counts[1..n] the
 * right-closed histogram bins, and counts[n + 1] every value above the range (and NaN/Inf).
 * Returns the largest |x| and whether any value was NaN or Inf (amax is meaningless then): one read of
 * the data gives amax, the finiteness check and the histogram, instead of three numpy passes.
 * The float32 arithmetic is exactly the numpy path's (multiply, then ceil; no fused ops).
 *
 * Three kernels give identical results: AVX-512 (bins of zeros counted by mask, the rest
 * compressed before counting), AVX2 (same, with a permute table) and portable C. The best one
 * the CPU supports is picked at run time; `kernel` forces one (tests compare them).
 * Counting goes into four interleaved 32-bit sub-histograms (repeated bins do not serialise on
 * one counter) that are flushed to the int64 counts before they can overflow.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_histkernels.h"

static PyObject *ceil_counts(PyObject *self, PyObject *args) {
    Py_buffer values, counts;
    float scale;
    int kernel = -1;
    if (!PyArg_ParseTuple(args, "y*fw*|i", &values, &scale, &counts, &kernel)) {
        return NULL;
    }
    PyObject *result = NULL;
    if (values.itemsize != 4 || counts.itemsize != 8 || counts.len < 16) {
        PyErr_SetString(PyExc_TypeError, "ceil_counts needs contiguous float32 values and at least 2 int64 counts");
        goto done;
    }
    if (kernel > best_kernel) {
        PyErr_Format(PyExc_ValueError, "kernel %d is not supported on this CPU (best: %d)", kernel, best_kernel);
        goto done;
    }
    Counter c = {NULL, (int64_t *)counts.buf, (size_t)(counts.len / 8), 0};
    c.sub = calloc(4 * c.m, sizeof(uint32_t));
    if (c.sub == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pass_fn pass = kernel_fn(kernel < 0 ? best_kernel : kernel);
    float amax;
    int nonfinite;
    Py_BEGIN_ALLOW_THREADS
    amax = pass((const float *)values.buf, (size_t)(values.len / 4), scale, &c, &nonfinite);
    flush(&c);
    Py_END_ALLOW_THREADS
    free(c.sub);
    result = Py_BuildValue("(dO)", (double)amax, nonfinite ? Py_True : Py_False);
done:
    PyBuffer_Release(&values);
    PyBuffer_Release(&counts);
    return result;
}

static PyObject *best(PyObject *self, PyObject *args) {
    return PyLong_FromLong(best_kernel);
}

static PyMethodDef methods[] = {
    {"ceil_counts", ceil_counts, METH_VARARGS,
     "ceil_counts(values, scale, counts[, kernel]) -> (amax, nonfinite): fused amax and |x|*scale ceil counts."},
    {"best_kernel", best, METH_NOARGS, "The kernel ceil_counts uses: 0 portable, 1 AVX2, 2 AVX-512."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fasthist", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fasthist(void) {
    init_kernels();
    return PyModule_Create(&module);
}
