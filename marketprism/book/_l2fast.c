/* Optional compiled kernel for marketprism/book/l2.py: the per-level loop of ``_apply_side``, the snapshot
 * ``_Side.load`` and the OKX checksum. The pure-Python code in l2.py is the reference: every function here
 * does exactly what it does (same levels, same strings, same order of dict/list operations, the same
 * exceptions at the same point), only without the interpreter. l2.py falls back to the Python code when this
 * module is not built (no compiler) or when MARKETPRISM_PURE_PYTHON is set.
 *
 * Exactness: prices and sizes stay the venue's strings (the dict maps price string -> size string). Floats
 * are only sort keys, and equal what Python's float(str) returns: an ASCII "ddd.ddd" with at most 2^53 as
 * its digits and at most 22 decimals is m / 10^f, one correctly rounded IEEE division of two exact doubles
 * (Clinger's fast path), i.e. the correctly rounded value float() returns; anything else (exponents, signs,
 * spaces, "inf", more digits) goes through float() itself. Level arrays are scanned here only when they are
 * plain JSON (strings without escapes, ASCII); anything else is left to msgspec (the caller falls back
 * before anything was applied). The checksum is CRC-32 (zlib's polynomial) over the venue's own strings.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define F_RESPELLED 1 /* a price arrived in a second spelling */
#define F_FALLBACK 2  /* not plain JSON: nothing applied, decode with msgspec instead */
#define F_REFILL 4    /* the window fell below ``low`` levels: call refill() */
#define F_TRIM 8      /* the window grew above ``high`` levels: call trim() */

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* ---- numbers ------------------------------------------------------------------------------------------ */

/* float() of a plain decimal (digits, at most one '.', at least one digit) when exactly computable here;
 * 0: outside the fast path. */
static inline int fast_decimal(const char *s, Py_ssize_t n, double *out) {
    uint64_t m = 0;
    int digits = 0, frac = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= '0' && c <= '9') {
            m = m * 10 + (c - '0');
            if (m > ((uint64_t)1 << 53)) return 0;
            digits = 1;
            if (frac >= 0) frac++;
        } else if (c == '.' && frac < 0) {
            frac = 0;
        } else {
            return 0;
        }
    }
    if (!digits || frac > 22) return 0;
    *out = frac > 0 ? (double)m / POW10[frac] : (double)m;
    return 1;
}

/* 1 zero, 0 non-zero, -1 outside the fast path (not a plain decimal). */
static inline int fast_zero(const char *s, Py_ssize_t n) {
    int digits = 0, dot = 0, nonzero = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= '0' && c <= '9') {
            digits = 1;
            nonzero |= c != '0';
        } else if (c == '.' && !dot) {
            dot = 1;
        } else {
            return -1;
        }
    }
    return digits ? !nonzero : -1;
}

/* float(obj), exactly as Python does it (raises ValueError/TypeError like float()). */
static int slow_double(PyObject *obj, double *out) {
    PyObject *f = PyNumber_Float(obj);
    if (f == NULL) return -1;
    *out = PyFloat_AS_DOUBLE(f);
    Py_DECREF(f);
    return 0;
}

/* The ASCII bytes of an exact str, or NULL (then the slow paths use the object). */
static inline const char *ascii_span(PyObject *o, Py_ssize_t *n) {
    if (PyUnicode_CheckExact(o) && PyUnicode_IS_COMPACT_ASCII(o)) {
        *n = PyUnicode_GET_LENGTH(o);
        return (const char *)PyUnicode_DATA(o);
    }
    return NULL;
}

static inline PyObject *make_ascii(const char *s, Py_ssize_t n) {
    PyObject *u = PyUnicode_New(n, 127);
    if (u != NULL) memcpy(PyUnicode_1BYTE_DATA(u), s, (size_t)n);
    return u;
}

/* ---- sorted window ------------------------------------------------------------------------------------ */

static inline double key_at(PyObject *keys, Py_ssize_t i) {
    PyObject *o = PyList_GET_ITEM(keys, i);
    return PyFloat_CheckExact(o) ? PyFloat_AS_DOUBLE(o) : PyFloat_AsDouble(o);
}

static inline Py_ssize_t bisect_left(PyObject *keys, double k) {
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(keys);
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (key_at(keys, mid) < k)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static inline Py_ssize_t bisect_right(PyObject *keys, double k) {
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(keys);
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (k < key_at(keys, mid))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* ``del lst[i]``: the tail moves down one slot (the list keeps its allocation, as a list does until it
 * shrinks below half of it). */
static inline int del_at(PyObject *lst, Py_ssize_t i) {
    Py_ssize_t n = PyList_GET_SIZE(lst);
    if (i < 0 || i >= n) {
        PyErr_SetString(PyExc_IndexError, "list assignment index out of range");
        return -1;
    }
    PyObject **items = ((PyListObject *)lst)->ob_item;
    PyObject *gone = items[i];
    memmove(&items[i], &items[i + 1], (size_t)(n - i - 1) * sizeof(PyObject *));
    Py_SET_SIZE(lst, n - 1);
    Py_DECREF(gone);
    return 0;
}

/* ``lst.insert(i, item)`` for 0 <= i <= len(lst) (a new reference to item is taken). */
static inline int insert_at(PyObject *lst, Py_ssize_t i, PyObject *item) {
    PyListObject *l = (PyListObject *)lst;
    Py_ssize_t n = Py_SIZE(l);
    if (n >= l->allocated) return PyList_Insert(lst, i, item);
    memmove(&l->ob_item[i + 1], &l->ob_item[i], (size_t)(n - i) * sizeof(PyObject *));
    Py_INCREF(item);
    l->ob_item[i] = item;
    Py_SET_SIZE(l, n + 1);
    return 0;
}

/* ``d.pop(key, None) is not None``: 1 removed, 0 absent, -1 error. */
static inline int dict_pop(PyObject *d, PyObject *key) {
#if PY_VERSION_HEX >= 0x030D0000
    return PyDict_Pop(d, key, NULL);
#else
    PyObject *v = _PyDict_Pop(d, key, Py_None);
    if (v == NULL) return -1;
    int found = v != Py_None;
    Py_DECREF(v);
    return found;
#endif
}

/* ---- applying levels ---------------------------------------------------------------------------------- */

typedef struct {
    PyObject *size;   /* dict: price str -> size str */
    PyObject *keys;   /* list of float, ascending, best last */
    PyObject *prices; /* list of price str, parallel to keys */
    double bound, sign;
    int window; /* 0: every level is sorted (the book saw a respelled price) */
    int respelled;
} Side;

static inline int price_key(Side *sd, PyObject *px, const char *s, Py_ssize_t n, double *k) {
    double v;
    if (s == NULL || !fast_decimal(s, n, &v)) {
        if (slow_double(px, &v) < 0) return -1;
    }
    *k = sd->sign * v;
    return 0;
}

/* _delete_other_spelling in l2.py */
static int delete_other_spelling(Side *sd, PyObject *px, const char *s, Py_ssize_t n) {
    double k;
    if (price_key(sd, px, s, n, &k) < 0) return -1;
    Py_ssize_t i = bisect_left(sd->keys, k);
    if (i < PyList_GET_SIZE(sd->keys) && key_at(sd->keys, i) == k) {
        if (PyDict_DelItem(sd->size, PyList_GET_ITEM(sd->prices, i)) < 0) return -1;
        if (del_at(sd->keys, i) < 0 || del_at(sd->prices, i) < 0) return -1;
    }
    return 0;
}

/* One level, as the loop body of _apply_side in l2.py. ``px`` is the price str (with its ASCII bytes in
 * pxs/pxn, or pxs NULL); ``sz`` the size str, or NULL with its ASCII bytes in szs/szn (made a str only when
 * stored). */
static int apply_level(Side *sd, PyObject *px, const char *pxs, Py_ssize_t pxn, PyObject *sz, const char *szs,
                       Py_ssize_t szn) {
    PyObject *own_sz = NULL;
    int zero = szs != NULL ? fast_zero(szs, szn) : -1;
    if (zero < 0) {
        double v;
        if (sz == NULL && (sz = own_sz = make_ascii(szs, szn)) == NULL) return -1;
        if (slow_double(sz, &v) < 0) goto error;
        zero = v == 0.0;
    }
    if (zero) { /* delete */
        int found = dict_pop(sd->size, px);
        if (found < 0) goto error;
        if (found) {
            double k;
            if (price_key(sd, px, pxs, pxn, &k) < 0) goto error;
            if (k >= sd->bound) {
                Py_ssize_t i = bisect_left(sd->keys, k);
                if (del_at(sd->keys, i) < 0 || del_at(sd->prices, i) < 0) goto error;
            }
        } else if (!sd->window) {
            if (delete_other_spelling(sd, px, pxs, pxn) < 0) goto error;
        }
    } else {
        if (sz == NULL && (sz = own_sz = make_ascii(szs, szn)) == NULL) return -1;
        Py_ssize_t before = PyDict_GET_SIZE(sd->size);
        if (PyDict_SetItem(sd->size, px, sz) < 0) goto error;
        if (PyDict_GET_SIZE(sd->size) != before) { /* a new price */
            double k;
            if (price_key(sd, px, pxs, pxn, &k) < 0) goto error;
            if (k >= sd->bound) {
                Py_ssize_t i = bisect_right(sd->keys, k);
                if (i && key_at(sd->keys, i - 1) == k) { /* the same price under another spelling */
                    PyObject *other = PyList_GET_ITEM(sd->prices, i - 1);
                    if (PyDict_DelItem(sd->size, other) < 0) goto error;
                    Py_INCREF(px);
                    PyList_SetItem(sd->prices, i - 1, px); /* steals px, drops the old spelling */
                    sd->respelled = 1;
                } else {
                    PyObject *kf = PyFloat_FromDouble(k);
                    if (kf == NULL) goto error;
                    int r = insert_at(sd->keys, i, kf);
                    Py_DECREF(kf);
                    if (r < 0 || insert_at(sd->prices, i, px) < 0) goto error;
                }
            }
        }
    }
    Py_XDECREF(own_sz);
    return 0;
error:
    Py_XDECREF(own_sz);
    return -1;
}

static int parse_side_args(PyObject *const *args, Side *sd, Py_ssize_t *low, Py_ssize_t *high) {
    sd->size = args[0];
    sd->keys = args[1];
    sd->prices = args[2];
    if (!PyDict_CheckExact(sd->size) || !PyList_CheckExact(sd->keys) || !PyList_CheckExact(sd->prices)) {
        PyErr_SetString(PyExc_TypeError, "size must be a dict, keys and prices lists");
        return -1;
    }
    sd->bound = PyFloat_AsDouble(args[3]);
    if (sd->bound == -1.0 && PyErr_Occurred()) return -1;
    sd->sign = PyFloat_AsDouble(args[4]);
    if (sd->sign == -1.0 && PyErr_Occurred()) return -1;
    Py_ssize_t window = PyLong_AsSsize_t(args[5]);
    if (window == -1 && PyErr_Occurred()) return -1;
    sd->window = window != 0;
    *low = PyLong_AsSsize_t(args[6]);
    if (*low == -1 && PyErr_Occurred()) return -1;
    *high = PyLong_AsSsize_t(args[7]);
    if (*high == -1 && PyErr_Occurred()) return -1;
    sd->respelled = 0;
    return 0;
}

/* The refill/trim test at the end of _apply_side, as flags for the caller. */
static PyObject *side_flags(Side *sd, Py_ssize_t low, Py_ssize_t high) {
    long flags = sd->respelled ? F_RESPELLED : 0;
    Py_ssize_t n = PyList_GET_SIZE(sd->keys);
    if (n < low && sd->bound != -INFINITY)
        flags |= F_REFILL;
    else if (n > high && sd->window)
        flags |= F_TRIM;
    return PyLong_FromLong(flags);
}

/* ---- scanning a JSON array of levels ------------------------------------------------------------------ */

typedef struct {
    const char *px, *sz;
    Py_ssize_t pxn, szn;
} Span;

typedef struct {
    Span *items;
    Py_ssize_t n, cap;
    Span local[64];
} Spans;

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

/* A JSON string without escapes, ASCII printable; the position after it or NULL (not plain). */
static inline const char *scan_string(const char *p, const char *end, const char **s, Py_ssize_t *n) {
    if (p >= end || *p != '"') return NULL;
    const char *start = ++p;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *s = start;
            *n = p - start;
            return p + 1;
        }
        if (c == '\\' || c < 0x20 || c >= 0x80) return NULL;
        p++;
    }
    return NULL;
}

/* 0: scanned; 1: not plain JSON (fall back to msgspec); -1: out of memory. */
static int scan_levels(const char *p, Py_ssize_t len, Spans *out) {
    const char *end = p + len;
    out->items = out->local;
    out->n = 0;
    out->cap = 64;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '[') return 1;
    p = skip_ws(p, end);
    if (p < end && *p == ']') {
        p = skip_ws(p + 1, end);
        return p == end ? 0 : 1;
    }
    for (;;) {
        Span sp;
        if (p >= end || *p++ != '[') return 1;
        p = skip_ws(p, end);
        if ((p = scan_string(p, end, &sp.px, &sp.pxn)) == NULL) return 1;
        p = skip_ws(p, end);
        if (p >= end || *p++ != ',') return 1;
        p = skip_ws(p, end);
        if ((p = scan_string(p, end, &sp.sz, &sp.szn)) == NULL) return 1;
        p = skip_ws(p, end);
        while (p < end && *p == ',') { /* extra elements (OKX): plain strings are skipped, others fall back */
            const char *s;
            Py_ssize_t n;
            p = skip_ws(p + 1, end);
            if ((p = scan_string(p, end, &s, &n)) == NULL) return 1;
            p = skip_ws(p, end);
        }
        if (p >= end || *p++ != ']') return 1;
        if (out->n == out->cap) {
            Py_ssize_t cap = out->cap * 4;
            Span *items = PyMem_Malloc((size_t)cap * sizeof(Span));
            if (items == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            memcpy(items, out->items, (size_t)out->n * sizeof(Span));
            if (out->items != out->local) PyMem_Free(out->items);
            out->items = items;
            out->cap = cap;
        }
        out->items[out->n++] = sp;
        p = skip_ws(p, end);
        if (p >= end) return 1;
        if (*p == ']') {
            p = skip_ws(p + 1, end);
            return p == end ? 0 : 1;
        }
        if (*p++ != ',') return 1;
        p = skip_ws(p, end);
    }
}

static void spans_free(Spans *s) {
    if (s->items != s->local) PyMem_Free(s->items);
}

/* The bytes of ``raw`` (bytes, msgspec.Raw, any buffer); 0 ok, 1 not a buffer (fall back). */
static int get_bytes(PyObject *raw, Py_buffer *view, const char **p, Py_ssize_t *n) {
    if (PyBytes_CheckExact(raw)) {
        view->obj = NULL;
        *p = PyBytes_AS_STRING(raw);
        *n = PyBytes_GET_SIZE(raw);
        return 0;
    }
    if (PyObject_GetBuffer(raw, view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return 1;
    }
    *p = (const char *)view->buf;
    *n = view->len;
    return 0;
}

static void release_bytes(Py_buffer *view) {
    if (view->obj != NULL) PyBuffer_Release(view);
}

/* apply_raw(size, keys, prices, bound, sign, window, low, high, raw) -> flags */
static PyObject *apply_raw(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Side sd;
    Py_ssize_t low, high;
    Py_buffer view;
    const char *buf;
    Py_ssize_t len;
    Spans spans;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "apply_raw takes 9 arguments");
        return NULL;
    }
    if (parse_side_args(args, &sd, &low, &high) < 0) return NULL;
    if (get_bytes(args[8], &view, &buf, &len)) return PyLong_FromLong(F_FALLBACK);
    int r = scan_levels(buf, len, &spans);
    if (r != 0) {
        spans_free(&spans);
        release_bytes(&view);
        return r < 0 ? NULL : PyLong_FromLong(F_FALLBACK);
    }
    for (Py_ssize_t i = 0; i < spans.n; i++) {
        Span *sp = &spans.items[i];
        PyObject *px = make_ascii(sp->px, sp->pxn);
        if (px == NULL) goto error;
        r = apply_level(&sd, px, sp->px, sp->pxn, NULL, sp->sz, sp->szn);
        Py_DECREF(px);
        if (r < 0) goto error;
    }
    spans_free(&spans);
    release_bytes(&view);
    return side_flags(&sd, low, high);
error:
    spans_free(&spans);
    release_bytes(&view);
    return NULL;
}

/* apply_levels(size, keys, prices, bound, sign, window, low, high, levels) -> flags; levels: a list of
 * objects with .price and .size (WireLevel). */
static PyObject *str_price, *str_size;

static PyObject *apply_levels(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Side sd;
    Py_ssize_t low, high;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "apply_levels takes 9 arguments");
        return NULL;
    }
    if (parse_side_args(args, &sd, &low, &high) < 0) return NULL;
    PyObject *seq = PySequence_Fast(args[8], "levels must be a sequence");
    if (seq == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *level = PySequence_Fast_ITEMS(seq)[i];
        PyObject *px = PyObject_GetAttr(level, str_price);
        if (px == NULL) goto error;
        PyObject *sz = PyObject_GetAttr(level, str_size);
        if (sz == NULL) {
            Py_DECREF(px);
            goto error;
        }
        Py_ssize_t pxn = 0, szn = 0;
        const char *pxs = ascii_span(px, &pxn), *szs = ascii_span(sz, &szn);
        int r = apply_level(&sd, px, pxs, pxn, sz, szs, szn);
        Py_DECREF(px);
        Py_DECREF(sz);
        if (r < 0) goto error;
    }
    Py_DECREF(seq);
    return side_flags(&sd, low, high);
error:
    Py_DECREF(seq);
    return NULL;
}

/* ---- snapshots ---------------------------------------------------------------------------------------- */

typedef struct {
    double k;
    Py_ssize_t i;
} KeyIdx;

static int cmp_key(const void *a, const void *b) {
    double x = ((const KeyIdx *)a)->k, y = ((const KeyIdx *)b)->k;
    return (x > y) - (x < y);
}

/* load_raw(sign, window, raw) -> (size, keys, prices, bound), or None: not plain JSON, or a case the
 * Python ``_Side.load`` must decide (a zero size, two levels with one price, a NaN price). Raises what
 * ``_Side.load`` raises for a non-numeric price or size, at the same level. */
static PyObject *load_raw(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer view;
    const char *buf;
    Py_ssize_t len;
    Spans spans;
    PyObject *size = NULL, *keys = NULL, *prices = NULL, *pxs = NULL, *result = NULL;
    KeyIdx *order = NULL;
    int fallback = 0;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "load_raw takes 3 arguments");
        return NULL;
    }
    double sign = PyFloat_AsDouble(args[0]);
    if (sign == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t window = PyLong_AsSsize_t(args[1]);
    if (window == -1 && PyErr_Occurred()) return NULL;
    if (get_bytes(args[2], &view, &buf, &len)) Py_RETURN_NONE;
    int r = scan_levels(buf, len, &spans);
    if (r != 0) {
        spans_free(&spans);
        release_bytes(&view);
        if (r < 0) return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t n = spans.n;
    order = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(KeyIdx));
    if (order == NULL || (pxs = PyList_New(n)) == NULL || (size = PyDict_New()) == NULL) {
        if (order == NULL) PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Span *sp = &spans.items[i];
        double v;
        PyObject *px = make_ascii(sp->px, sp->pxn);
        if (px == NULL) goto done;
        PyList_SET_ITEM(pxs, i, px);
        if (!fast_decimal(sp->px, sp->pxn, &v) && slow_double(px, &v) < 0) goto done;
        order[i].k = sign * v;
        order[i].i = i;
        if (isnan(v)) fallback = 1;
        int zero = fast_zero(sp->sz, sp->szn);
        if (zero < 0) {
            PyObject *sz = make_ascii(sp->sz, sp->szn);
            if (sz == NULL) goto done;
            int rr = slow_double(sz, &v);
            Py_DECREF(sz);
            if (rr < 0) goto done;
            zero = v == 0.0;
        }
        if (zero) fallback = 1;
    }
    if (fallback) goto done;
    qsort(order, (size_t)n, sizeof(KeyIdx), cmp_key);
    for (Py_ssize_t j = 1; j < n; j++) {
        if (order[j].k == order[j - 1].k) {
            fallback = 1;
            goto done;
        }
    }
    /* size in the levels' order (as the Python dict by key would have it: every key once, in order) */
    for (Py_ssize_t i = 0; i < n; i++) {
        Span *sp = &spans.items[i];
        PyObject *sz = make_ascii(sp->sz, sp->szn);
        if (sz == NULL) goto done;
        int rr = PyDict_SetItem(size, PyList_GET_ITEM(pxs, i), sz);
        Py_DECREF(sz);
        if (rr < 0) goto done;
    }
    Py_ssize_t first = window && n > window ? n - window : 0;
    double bound = window && n > window ? order[first].k : -INFINITY;
    if ((keys = PyList_New(n - first)) == NULL || (prices = PyList_New(n - first)) == NULL) goto done;
    for (Py_ssize_t j = first; j < n; j++) {
        PyObject *kf = PyFloat_FromDouble(order[j].k);
        if (kf == NULL) goto done;
        PyList_SET_ITEM(keys, j - first, kf);
        PyObject *px = PyList_GET_ITEM(pxs, order[j].i);
        Py_INCREF(px);
        PyList_SET_ITEM(prices, j - first, px);
    }
    result = Py_BuildValue("(OOOd)", size, keys, prices, bound);
done:
    PyMem_Free(order);
    Py_XDECREF(pxs);
    Py_XDECREF(size);
    Py_XDECREF(keys);
    Py_XDECREF(prices);
    spans_free(&spans);
    release_bytes(&view);
    if (fallback && !PyErr_Occurred()) Py_RETURN_NONE;
    return result;
}

/* ---- OKX checksum ------------------------------------------------------------------------------------- */

static uint32_t CRC_TABLE[8][256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int j = 0; j < 8; j++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        CRC_TABLE[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = CRC_TABLE[0][i];
        for (int t = 1; t < 8; t++) {
            c = CRC_TABLE[0][c & 0xFF] ^ (c >> 8);
            CRC_TABLE[t][i] = c;
        }
    }
}

/* zlib.crc32 (CRC-32/ISO-HDLC), slicing by 8. */
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = CRC_TABLE[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= crc;
        crc = CRC_TABLE[7][lo & 0xFF] ^ CRC_TABLE[6][(lo >> 8) & 0xFF] ^ CRC_TABLE[5][(lo >> 16) & 0xFF] ^
              CRC_TABLE[4][lo >> 24] ^ CRC_TABLE[3][hi & 0xFF] ^ CRC_TABLE[2][(hi >> 8) & 0xFF] ^
              CRC_TABLE[1][(hi >> 16) & 0xFF] ^ CRC_TABLE[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = CRC_TABLE[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

typedef struct {
    unsigned char *buf;
    size_t len, cap, parts;
    unsigned char local[4096];
} Buf;

/* Append ':' (except before the first part) and the UTF-8 of str ``s``. */
static int buf_put(Buf *b, PyObject *s) {
    Py_ssize_t n;
    const char *data = PyUnicode_Check(s) ? PyUnicode_AsUTF8AndSize(s, &n) : NULL;
    if (data == NULL) {
        if (!PyErr_Occurred()) /* as ":".join() says it */
            PyErr_Format(PyExc_TypeError, "sequence item %zd: expected str instance, %.80s found", (Py_ssize_t)b->parts,
                         Py_TYPE(s)->tp_name);
        return -1;
    }
    size_t need = b->len + (size_t)n + 1;
    if (need > b->cap) {
        size_t cap = need * 2;
        unsigned char *nb = PyMem_Malloc(cap);
        if (nb == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(nb, b->buf, b->len);
        if (b->buf != b->local) PyMem_Free(b->buf);
        b->buf = nb;
        b->cap = cap;
    }
    if (b->parts++) b->buf[b->len++] = ':';
    memcpy(b->buf + b->len, data, (size_t)n);
    b->len += (size_t)n;
    return 0;
}

/* One level of a side whose prices are listed best last: price at position j from the best, and its size. */
static int put_level(Buf *b, PyObject *prices, PyObject *size, Py_ssize_t j) {
    PyObject *px = PyList_GET_ITEM(prices, PyList_GET_SIZE(prices) - 1 - j);
    PyObject *sz = PyDict_GetItemWithError(size, px);
    if (sz == NULL) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, px);
        return -1;
    }
    Py_INCREF(px);
    Py_INCREF(sz);
    int r = buf_put(b, px) < 0 || buf_put(b, sz) < 0 ? -1 : 0;
    Py_DECREF(px);
    Py_DECREF(sz);
    return r;
}

/* okx_checksum(bid_prices, bid_size, ask_prices, ask_size, n) -> signed CRC32 of
 * "bid1px:bid1sz:ask1px:ask1sz:..." over the best n levels per side; price lists best LAST. */
static PyObject *okx_checksum(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "okx_checksum takes 5 arguments");
        return NULL;
    }
    PyObject *bp = args[0], *bs = args[1], *ap = args[2], *as = args[3];
    if (!PyList_CheckExact(bp) || !PyList_CheckExact(ap) || !PyDict_Check(bs) || !PyDict_Check(as)) {
        PyErr_SetString(PyExc_TypeError, "price lists and size dicts expected");
        return NULL;
    }
    Py_ssize_t depth = PyLong_AsSsize_t(args[4]);
    if (depth == -1 && PyErr_Occurred()) return NULL;
    if (depth < 0) depth = 0;
    Py_ssize_t nb = PyList_GET_SIZE(bp) < depth ? PyList_GET_SIZE(bp) : depth;
    Py_ssize_t na = PyList_GET_SIZE(ap) < depth ? PyList_GET_SIZE(ap) : depth;
    Buf b;
    b.buf = b.local;
    b.len = 0;
    b.parts = 0;
    b.cap = sizeof(b.local);
    Py_ssize_t both = nb < na ? nb : na;
    int r = 0;
    for (Py_ssize_t j = 0; j < both && !r; j++) r = put_level(&b, bp, bs, j) || put_level(&b, ap, as, j);
    for (Py_ssize_t j = both; j < nb && !r; j++) r = put_level(&b, bp, bs, j);
    for (Py_ssize_t j = both; j < na && !r; j++) r = put_level(&b, ap, as, j);
    uint32_t crc = r ? 0 : crc32_update(0, b.buf, b.len);
    if (b.buf != b.local) PyMem_Free(b.buf);
    if (r) return NULL;
    return PyLong_FromLong((long)(int32_t)crc);
}

/* crc32(data) -> zlib.crc32(data), unsigned; for the tests. */
static PyObject *crc32(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t crc = crc32_update(0, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

/* ---- module ------------------------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"apply_raw", (PyCFunction)(void (*)(void))apply_raw, METH_FASTCALL,
     "apply_raw(size, keys, prices, bound, sign, window, low, high, raw) -> flags"},
    {"apply_levels", (PyCFunction)(void (*)(void))apply_levels, METH_FASTCALL,
     "apply_levels(size, keys, prices, bound, sign, window, low, high, levels) -> flags"},
    {"load_raw", (PyCFunction)(void (*)(void))load_raw, METH_FASTCALL,
     "load_raw(sign, window, raw) -> (size, keys, prices, bound) | None"},
    {"okx_checksum", (PyCFunction)(void (*)(void))okx_checksum, METH_FASTCALL,
     "okx_checksum(bid_prices, bid_size, ask_prices, ask_size, n) -> int"},
    {"crc32", crc32, METH_O, "crc32(data) -> int, as zlib.crc32"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_l2fast", "Compiled kernel of marketprism.book.l2 (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__l2fast(void) {
    crc_init();
    if (str_price == NULL && (str_price = PyUnicode_InternFromString("price")) == NULL) return NULL;
    if (str_size == NULL && (str_size = PyUnicode_InternFromString("size")) == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    /* l2.py uses this module only when VERSION is the one it was written for (_KERNEL_VERSION) */
    if (PyModule_AddIntConstant(m, "VERSION", 1) < 0 || PyModule_AddIntConstant(m, "F_RESPELLED", F_RESPELLED) < 0 ||
        PyModule_AddIntConstant(m, "F_FALLBACK", F_FALLBACK) < 0 ||
        PyModule_AddIntConstant(m, "F_REFILL", F_REFILL) < 0 || PyModule_AddIntConstant(m, "F_TRIM", F_TRIM) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
