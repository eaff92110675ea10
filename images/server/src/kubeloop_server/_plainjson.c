/* The most common OIP REST request, read straight from its bytes.
 *
 *   {"inputs": [{"name": "<input>", "shape": [N, F], "datatype": "FP32", "data": [...]}], "id": "..."}
 *
 * Turning that body into a float tensor through orjson and the codec's Python checks (a Python float per
 * value, a type test per element, numpy's conversion) cost the HTTP fast lane about a fifth of a request's
 * CPU. parse_plain() reads it in one pass into the tensor's bytes instead.
 *
 * It only ever answers "here is the tensor" or "not mine" (None): anything it does not read exactly as the
 * general path (orjson, then kubeloop_server.codec) would, it leaves to that path, which decodes it or
 * refuses it with the error naming the problem. So it declines: any other key or a key given twice, escapes
 * and control characters in strings, a name or datatype other than the expected one, integer literals past
 * 2^53 (an integer's float is rounded past there, and orjson refuses those past 64 bits), values not finite
 * once cast to the tensor's type, data that does not match the shape, N or F of 0, and bodies with more than
 * SLOW_NUMBERS numbers that need CPython's slower conversion (more than 16 significant digits, exponents
 * past 22) or with a number token longer than 63 characters. The numbers are the ones the general path
 * computes: integer literals become the integer's double (-0 is 0, as orjson reads it as an integer),
 * other literals are rounded correctly (an exact significand times an exact power of ten, or CPython's
 * PyOS_string_to_double as float() uses), and a float32 tensor takes the double cast to float, as numpy
 * casts. images/server/tests/test_plainjson.py checks this against the general path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const char *p;
    const char *end;
} Cursor;

/* Values parsed before the shape is known (data may come first), grown as needed. */
typedef struct {
    double *v;
    Py_ssize_t n;
    Py_ssize_t cap;
    double small[64];
} Values;

static void values_free(Values *vals) {
    if (vals->v != vals->small) {
        PyMem_Free(vals->v);
    }
}

static int values_push(Values *vals, double d) {
    if (vals->n == vals->cap) {
        Py_ssize_t cap = vals->cap * 2;
        double *v;
        if (cap > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(double)) {
            return 0;
        }
        if (vals->v == vals->small) {
            v = PyMem_Malloc((size_t)cap * sizeof(double));
            if (v != NULL) {
                memcpy(v, vals->small, sizeof(vals->small));
            }
        } else {
            v = PyMem_Realloc(vals->v, (size_t)cap * sizeof(double));
        }
        if (v == NULL) {
            return 0;
        }
        vals->v = v;
        vals->cap = cap;
    }
    vals->v[vals->n++] = d;
    return 1;
}

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

static inline int take(Cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

static inline int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* A string without escapes or control characters: its bytes are [*s, *s + *n). */
static int read_string(Cursor *c, const char **s, Py_ssize_t *n) {
    const char *q;
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"') {
        return 0;
    }
    q = ++c->p;
    while (q < c->end) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"') {
            *s = c->p;
            *n = q - c->p;
            c->p = q + 1;
            return 1;
        }
        if (ch == '\\' || ch < 0x20) {
            return 0;
        }
        q++;
    }
    return 0;
}

static inline int equals(const char *s, Py_ssize_t n, const char *want, Py_ssize_t want_n) {
    return n == want_n && memcmp(s, want, (size_t)n) == 0;
}

#define KEY_IS(s, n, lit) equals((s), (n), (lit), (Py_ssize_t)(sizeof(lit) - 1))

#define TWO_53 9007199254740992LL /* the largest of the integers that all have an exact double */
/* Numbers per body read by PyOS_string_to_double before the body is left to the general path. */
#define SLOW_NUMBERS 4

/* Exact powers of ten as doubles: 10^22 is the largest that is exact. */
static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A JSON number (the strict grammar) as the general path would have its value. */
static int read_number(Cursor *c, double *out, int *slow_budget) {
    const char *s, *q, *digits;
    int is_int = 1, neg = 0, exp_neg = 0;
    int64_t significant = 0; /* significant digits (leading zeros are not) */
    int64_t mant = 0;        /* the significant digits as an integer, while there are at most 16 */
    int64_t scale = 0;       /* digits after the decimal point */
    int64_t exp10 = 0;       /* the exponent part, while short enough to matter */
    Py_ssize_t len;
    skip_ws(c);
    s = q = c->p;
    if (q < c->end && *q == '-') {
        neg = 1;
        q++;
    }
    if (q >= c->end) {
        return 0;
    }
    if (*q == '0') {
        q++;
    } else if (*q >= '1' && *q <= '9') {
        while (q < c->end && is_digit(*q)) {
            if (significant < 16) {
                mant = mant * 10 + (*q - '0');
            }
            significant++;
            q++;
        }
    } else {
        return 0;
    }
    if (q < c->end && *q == '.') {
        digits = ++q;
        while (q < c->end && is_digit(*q)) {
            if (significant > 0 || *q != '0') {
                if (significant < 16) {
                    mant = mant * 10 + (*q - '0');
                }
                significant++;
            }
            scale++;
            q++;
        }
        if (q == digits) {
            return 0;
        }
        is_int = 0;
    }
    if (q < c->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < c->end && (*q == '+' || *q == '-')) {
            exp_neg = *q == '-';
            q++;
        }
        digits = q;
        while (q < c->end && is_digit(*q)) {
            if (exp10 < 100000) {
                exp10 = exp10 * 10 + (*q - '0');
            }
            q++;
        }
        if (q == digits) {
            return 0;
        }
        is_int = 0;
    }
    len = q - s;
    if (is_int) {
        /* orjson reads an integer literal as an integer; up to 2^53 its double is exact (and past 64 bits
           orjson refuses it) */
        if (significant > 16 || mant > TWO_53) {
            return 0;
        }
        *out = (double)(neg ? -mant : mant);
    } else {
        int64_t e = (exp_neg ? -exp10 : exp10) - scale;
        if (significant <= 16 && mant <= TWO_53 && e >= -22 && e <= 22) {
            /* Clinger's fast path: an exact significand and an exact power of ten, one correctly rounded
               operation (IEEE double arithmetic, as on every platform CPython supports) */
            double m = (double)mant;
            double d = e < 0 ? m / POW10[-e] : m * POW10[e];
            *out = neg ? -d : d;
        } else if (significant == 0) {
            *out = neg ? -0.0 : 0.0;
        } else {
            /* CPython's correctly rounded conversion, ten times slower: for a few odd values; a body full of
               them (17-digit reprs of floats) goes to orjson, which reads those faster */
            char buf[64];
            char *stop;
            double d;
            if (len >= (Py_ssize_t)sizeof(buf) || (*slow_budget)-- <= 0) {
                return 0;
            }
            memcpy(buf, s, (size_t)len);
            buf[len] = '\0';
            d = PyOS_string_to_double(buf, &stop, NULL);
            if (d == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            if (stop != buf + len) {
                return 0;
            }
            *out = d;
        }
    }
    c->p = q;
    return 1;
}

/* A non-negative integer of at most 9 digits (a shape dimension). */
static int read_dim(Cursor *c, Py_ssize_t *out) {
    const char *q, *start;
    Py_ssize_t v = 0;
    skip_ws(c);
    start = q = c->p;
    while (q < c->end && is_digit(*q)) {
        v = v * 10 + (*q - '0');
        q++;
        if (q - start > 9) {
            return 0;
        }
    }
    if (q == start || (*start == '0' && q - start > 1)) {
        return 0;
    }
    /* not a fraction or an exponent: those are numbers, not integers, and the general path decides */
    if (q < c->end && (*q == '.' || *q == 'e' || *q == 'E')) {
        return 0;
    }
    c->p = q;
    *out = v;
    return 1;
}

/* "data": a flat array of numbers, or an array of rows (arrays of numbers) of one width. */
static int read_data(Cursor *c, Values *vals, Py_ssize_t *rows, Py_ssize_t *row_width) {
    int slow_budget = SLOW_NUMBERS;
    *rows = -1; /* flat */
    *row_width = -1;
    if (!take(c, '[')) {
        return 0;
    }
    if (take(c, ']')) {
        return 0; /* empty: left to the general path */
    }
    skip_ws(c);
    if (c->p < c->end && *c->p == '[') {
        *rows = 0;
        do {
            Py_ssize_t before = vals->n;
            if (!take(c, '[')) {
                return 0;
            }
            do {
                double d;
                if (!read_number(c, &d, &slow_budget) || !values_push(vals, d)) {
                    return 0;
                }
            } while (take(c, ','));
            if (!take(c, ']')) {
                return 0;
            }
            if (*row_width < 0) {
                *row_width = vals->n - before;
            } else if (vals->n - before != *row_width) {
                return 0;
            }
            (*rows)++;
        } while (take(c, ','));
    } else {
        do {
            double d;
            if (!read_number(c, &d, &slow_budget) || !values_push(vals, d)) {
                return 0;
            }
        } while (take(c, ','));
    }
    return take(c, ']');
}

/* The one tensor object of "inputs". */
static int read_tensor(Cursor *c, const char *name, Py_ssize_t name_n, const char *dtype, Py_ssize_t dtype_n,
                       Values *vals, Py_ssize_t dims[2], Py_ssize_t *rows, Py_ssize_t *row_width) {
    int seen_name = 0, seen_shape = 0, seen_dtype = 0, seen_data = 0;
    if (!take(c, '{')) {
        return 0;
    }
    do {
        const char *k, *s;
        Py_ssize_t kn, sn;
        if (!read_string(c, &k, &kn) || !take(c, ':')) {
            return 0;
        }
        if (KEY_IS(k, kn, "name")) {
            if (seen_name++ || !read_string(c, &s, &sn) || !equals(s, sn, name, name_n)) {
                return 0;
            }
        } else if (KEY_IS(k, kn, "datatype")) {
            if (seen_dtype++ || !read_string(c, &s, &sn) || !equals(s, sn, dtype, dtype_n)) {
                return 0;
            }
        } else if (KEY_IS(k, kn, "shape")) {
            if (seen_shape++ || !take(c, '[') || !read_dim(c, &dims[0]) || !take(c, ',') ||
                !read_dim(c, &dims[1]) || !take(c, ']')) {
                return 0;
            }
        } else if (KEY_IS(k, kn, "data")) {
            if (seen_data++ || !read_data(c, vals, rows, row_width)) {
                return 0;
            }
        } else {
            return 0;
        }
    } while (take(c, ','));
    return take(c, '}') && seen_name && seen_shape && seen_dtype && seen_data;
}

static PyObject *parse_plain(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer body;
    const char *name, *dtype;
    Py_ssize_t name_n, dtype_n, dims[2] = {0, 0}, rows = -1, row_width = -1, count, i;
    int itemsize, seen_inputs = 0, ok = 0;
    Values vals;
    Cursor c;
    PyObject *id = NULL, *buf = NULL, *result = NULL;

    if (!PyArg_ParseTuple(args, "y*y#y#i", &body, &name, &name_n, &dtype, &dtype_n, &itemsize)) {
        return NULL;
    }
    if (itemsize != 4 && itemsize != 8) {
        PyBuffer_Release(&body);
        PyErr_SetString(PyExc_ValueError, "itemsize must be 4 (float32) or 8 (float64)");
        return NULL;
    }
    vals.v = vals.small;
    vals.n = 0;
    vals.cap = (Py_ssize_t)(sizeof(vals.small) / sizeof(double));
    c.p = (const char *)body.buf;
    c.end = c.p + body.len;

    if (!take(&c, '{')) {
        goto done;
    }
    do {
        const char *k, *s;
        Py_ssize_t kn, sn;
        if (!read_string(&c, &k, &kn) || !take(&c, ':')) {
            goto done;
        }
        if (KEY_IS(k, kn, "inputs")) {
            if (seen_inputs++ || !take(&c, '[') ||
                !read_tensor(&c, name, name_n, dtype, dtype_n, &vals, dims, &rows, &row_width) ||
                !take(&c, ']')) {
                goto done;
            }
        } else if (KEY_IS(k, kn, "id")) {
            if (id != NULL || !read_string(&c, &s, &sn)) {
                goto done;
            }
            id = PyUnicode_DecodeUTF8(s, sn, "strict");
            if (id == NULL) { /* not UTF-8: the general path says so */
                PyErr_Clear();
                goto done;
            }
        } else {
            goto done;
        }
    } while (take(&c, ','));
    if (!take(&c, '}') || !seen_inputs) {
        goto done;
    }
    skip_ws(&c);
    if (c.p != c.end) {
        goto done;
    }
    if (dims[0] < 1 || dims[1] < 1) {
        goto done;
    }
    count = dims[0] * dims[1]; /* at most 10^18: no overflow */
    if (vals.n != count || (rows >= 0 && (rows != dims[0] || row_width != dims[1]))) {
        goto done;
    }
    buf = PyByteArray_FromStringAndSize(NULL, count * itemsize);
    if (buf == NULL) {
        goto fail;
    }
    if (itemsize == 4) {
        float *f = (float *)PyByteArray_AS_STRING(buf);
        for (i = 0; i < count; i++) {
            f[i] = (float)vals.v[i];
            if (!isfinite(f[i])) {
                goto done;
            }
        }
    } else {
        double *d = (double *)PyByteArray_AS_STRING(buf);
        for (i = 0; i < count; i++) {
            d[i] = vals.v[i];
            if (!isfinite(d[i])) {
                goto done;
            }
        }
    }
    ok = 1;

done:
    if (ok) {
        result = Py_BuildValue("(OnnO)", buf, dims[0], dims[1], id != NULL ? id : Py_None);
    } else {
        result = Py_NewRef(Py_None);
    }
fail:
    Py_XDECREF(buf);
    Py_XDECREF(id);
    values_free(&vals);
    PyBuffer_Release(&body);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_plain", parse_plain, METH_VARARGS,
     "parse_plain(body, name, datatype, itemsize) -> (bytearray, rows, width, id or None) | None\n\n"
     "The tensor of a one-input OIP REST request, or None when the general path must decode the body."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_plainjson",
    .m_doc = "The most common OIP REST request, read straight from its bytes.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__plainjson(void) { return PyModule_Create(&module); }
