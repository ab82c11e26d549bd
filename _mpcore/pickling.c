/* Pickling of plain data without a Pickler object.
 *
 * Most messages between processes are trees of None, bools, ints,
 * floats, str, bytes, tuples, lists and dicts.  For objects of exactly
 * those types the C pickler never consults a dispatch table, a reducer
 * or persistent_id, so ForkingPickler's output for them is that of
 * pickle.dumps(obj, 4).  This file writes those same bytes directly
 * (byte for byte: the tests compare them), and reads back the opcodes
 * it writes, with no Pickler or Unpickler to build, no 4 KiB output
 * buffer to allocate and no Python-level code per message.
 *
 * Anything else -- other types, subclasses, very deep nesting, output
 * over one pickle frame (64 KiB), opcodes we do not read, malformed
 * data -- makes the fast path decline, and the caller falls back to the
 * full pickler registered by multiprocessing_c.reduction (which then
 * also raises the errors pickle would raise).
 */
#include "mpcore.h"

#include <string.h>

/* Opcodes, named as in the pickle protocol (pickletools). */
#define OP_MARK             '('
#define OP_STOP             '.'
#define OP_BININT           'J'
#define OP_BININT1          'K'
#define OP_BININT2          'M'
#define OP_NONE             'N'
#define OP_BINUNICODE       'X'
#define OP_APPEND           'a'
#define OP_BINBYTES         'B'
#define OP_SHORT_BINBYTES   'C'
#define OP_EMPTY_DICT       '}'
#define OP_APPENDS          'e'
#define OP_BINGET           'h'
#define OP_LONG_BINGET      'j'
#define OP_EMPTY_LIST       ']'
#define OP_SETITEM          's'
#define OP_TUPLE            't'
#define OP_EMPTY_TUPLE      ')'
#define OP_SETITEMS         'u'
#define OP_BINFLOAT         'G'
#define OP_PROTO            0x80
#define OP_TUPLE1           0x85
#define OP_TUPLE2           0x86
#define OP_TUPLE3           0x87
#define OP_NEWTRUE          0x88
#define OP_NEWFALSE         0x89
#define OP_LONG1            0x8a
#define OP_SHORT_BINUNICODE 0x8c
#define OP_BINUNICODE8      0x8d
#define OP_BINBYTES8        0x8e
#define OP_MEMOIZE          0x94
#define OP_FRAME            0x95

#define PROTOCOL 4
#define HIGHEST_READ_PROTOCOL 5
/* The pickler starts a new frame once one reaches this size; staying
 * below it keeps the whole pickle in one frame, as ours always is. */
#define FRAME_TARGET ((size_t)64 * 1024)
/* Frames shorter than this are not framed at all. */
#define FRAME_MIN 4
/* Lists and dicts are written in batches of this many items. */
#define BATCH 1000
/* Deeper nesting is left to the full pickler. */
#define MAX_DEPTH 64
/* PROTO 4, then room for FRAME and its 8-byte length. */
#define PREAMBLE 11

/* ------------------------------------------------------------------ */
/* Writing */

#define MEMO_INLINE 64      /* slots; a power of two */

typedef struct {
    PyObject *key;          /* NULL: free slot */
    Py_ssize_t index;
} memo_slot;

typedef struct {
    char *buf;              /* output; the caller's buffer or heap */
    size_t len, cap;
    size_t limit;           /* decline if the output would pass this */
    char *stackbuf;         /* the caller's buffer (not ours to free) */
    memo_slot *memo;        /* open addressing on the object address */
    size_t memo_mask;       /* slots - 1 */
    Py_ssize_t memo_count;
    int depth;
    memo_slot memo_inline[MEMO_INLINE];
} writer;

/* Return codes of the writer: done, declined, error (exception set). */
#define WR_DONE 1
#define WR_DECLINE 0
#define WR_ERROR (-1)

static int
w_grow(writer *w, size_t need)
{
    if (w->len + need > w->limit)
        return WR_DECLINE;
    size_t cap = w->cap * 2;
    while (cap < w->len + need)
        cap *= 2;
    if (cap > w->limit)
        cap = w->limit;
    char *nbuf;
    if (w->buf == w->stackbuf) {
        nbuf = PyMem_Malloc(cap);
        if (nbuf != NULL)
            memcpy(nbuf, w->buf, w->len);
    }
    else {
        nbuf = PyMem_Realloc(w->buf, cap);
    }
    if (nbuf == NULL) {
        PyErr_NoMemory();
        return WR_ERROR;
    }
    w->buf = nbuf;
    w->cap = cap;
    return WR_DONE;
}

/* Room for `n` more bytes. */
#define W_RESERVE(w, n)                                                     \
    do {                                                                    \
        if ((w)->len + (n) > (w)->cap) {                                    \
            int r_ = w_grow((w), (n));                                      \
            if (r_ != WR_DONE)                                                 \
                return r_;                                                  \
        }                                                                   \
    } while (0)

static int
w_byte(writer *w, unsigned char c)
{
    W_RESERVE(w, 1);
    w->buf[w->len++] = (char)c;
    return WR_DONE;
}

static inline void
put_le32(char *p, uint32_t v)
{
    p[0] = (char)v; p[1] = (char)(v >> 8);
    p[2] = (char)(v >> 16); p[3] = (char)(v >> 24);
}

static inline void
put_le64(char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (char)(v >> (8 * i));
}

static inline size_t
memo_hash(PyObject *obj)
{
    uintptr_t h = (uintptr_t)obj >> 4;
    return (size_t)(h * (uintptr_t)0x9E3779B97F4A7C15ULL);
}

/* The memo index of `obj`, or -1 if it has not been written yet. */
static Py_ssize_t
memo_find(writer *w, PyObject *obj)
{
    if (w->memo_count == 0)
        return -1;
    size_t i = memo_hash(obj) & w->memo_mask;
    for (;;) {
        memo_slot *s = &w->memo[i];
        if (s->key == obj)
            return s->index;
        if (s->key == NULL)
            return -1;
        i = (i + 1) & w->memo_mask;
    }
}

static int
memo_add(writer *w, PyObject *obj)
{
    if (w->memo_count == 0 && w->memo == w->memo_inline)
        memset(w->memo_inline, 0, sizeof(w->memo_inline));
    /* Keep the load at most one half. */
    else if ((size_t)(w->memo_count + 1) * 2 > w->memo_mask + 1) {
        size_t nslots = (w->memo_mask + 1) * 2;
        memo_slot *nmemo = PyMem_Calloc(nslots, sizeof(memo_slot));
        if (nmemo == NULL) {
            PyErr_NoMemory();
            return WR_ERROR;
        }
        for (size_t i = 0; i <= w->memo_mask; i++) {
            PyObject *key = w->memo[i].key;
            if (key == NULL)
                continue;
            size_t j = memo_hash(key) & (nslots - 1);
            while (nmemo[j].key != NULL)
                j = (j + 1) & (nslots - 1);
            nmemo[j] = w->memo[i];
        }
        if (w->memo != w->memo_inline)
            PyMem_Free(w->memo);
        w->memo = nmemo;
        w->memo_mask = nslots - 1;
    }
    size_t i = memo_hash(obj) & w->memo_mask;
    while (w->memo[i].key != NULL)
        i = (i + 1) & w->memo_mask;
    w->memo[i].key = obj;
    w->memo[i].index = w->memo_count++;
    return w_byte(w, OP_MEMOIZE);
}

static int
w_get(writer *w, Py_ssize_t index)
{
    W_RESERVE(w, 5);
    if (index < 256) {
        w->buf[w->len++] = (char)OP_BINGET;
        w->buf[w->len++] = (char)index;
    }
    else {
        if ((uint64_t)index > 0xffffffffULL)
            return WR_DECLINE;
        w->buf[w->len++] = (char)OP_LONG_BINGET;
        put_le32(w->buf + w->len, (uint32_t)index);
        w->len += 4;
    }
    return WR_DONE;
}

static int
w_long(writer *w, PyObject *obj)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (overflow)
        return WR_DECLINE;            /* beyond 64 bits: the full pickler */
    if (v == -1 && PyErr_Occurred())
        return WR_ERROR;
    W_RESERVE(w, 11);
    char *p = w->buf + w->len;
    if (v >= -0x80000000LL && v <= 0x7fffffffLL) {
        uint32_t u = (uint32_t)(int32_t)v;
        if (u >> 16) {
            p[0] = OP_BININT;
            put_le32(p + 1, u);
            w->len += 5;
        }
        else if (u >> 8) {
            p[0] = OP_BININT2;
            p[1] = (char)u;
            p[2] = (char)(u >> 8);
            w->len += 3;
        }
        else {
            p[0] = OP_BININT1;
            p[1] = (char)u;
            w->len += 2;
        }
        return WR_DONE;
    }
    /* LONG1: little-endian two's complement in the fewest bytes that
     * hold the magnitude's bits plus a sign bit. */
    uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    int nbits = 64 - __builtin_clzll(mag);
    int nbytes = nbits / 8 + 1;
    unsigned char bytes[9];
    for (int i = 0; i < nbytes; i++)
        bytes[i] = i < 8 ? (unsigned char)((uint64_t)v >> (8 * i))
                         : (unsigned char)(v < 0 ? 0xff : 0);
    if (v < 0 && nbytes > 1 && bytes[nbytes - 1] == 0xff &&
            (bytes[nbytes - 2] & 0x80))
        nbytes--;
    p[0] = (char)OP_LONG1;
    p[1] = (char)nbytes;
    memcpy(p + 2, bytes, (size_t)nbytes);
    w->len += 2 + (size_t)nbytes;
    return WR_DONE;
}

static int
w_float(writer *w, PyObject *obj)
{
    double d = PyFloat_AS_DOUBLE(obj);
    uint64_t bits;
    memcpy(&bits, &d, 8);
    W_RESERVE(w, 9);
    char *p = w->buf + w->len;
    p[0] = OP_BINFLOAT;
    for (int i = 0; i < 8; i++)
        p[1 + i] = (char)(bits >> (56 - 8 * i));
    w->len += 9;
    return WR_DONE;
}

/* A str or bytes payload after its opcode and length. */
static int
w_counted(writer *w, unsigned char op1, unsigned char op4, unsigned char op8,
          const char *data, Py_ssize_t size)
{
    W_RESERVE(w, 9 + (size_t)size);
    char *p = w->buf + w->len;
    if (size <= 0xff) {
        p[0] = (char)op1;
        p[1] = (char)size;
        w->len += 2;
    }
    else if ((uint64_t)size <= 0xffffffffULL) {
        p[0] = (char)op4;
        put_le32(p + 1, (uint32_t)size);
        w->len += 5;
    }
    else {
        p[0] = (char)op8;
        put_le64(p + 1, (uint64_t)size);
        w->len += 9;
    }
    memcpy(w->buf + w->len, data, (size_t)size);
    w->len += (size_t)size;
    return WR_DONE;
}

static int w_obj(writer *w, PyObject *obj);

static int
w_tuple(writer *w, PyObject *obj)
{
    static const unsigned char small_ops[] = {0, OP_TUPLE1, OP_TUPLE2, OP_TUPLE3};
    Py_ssize_t n = PyTuple_GET_SIZE(obj);
    int r;
    if (n == 0)
        return w_byte(w, OP_EMPTY_TUPLE);   /* never memoized */
    if (n > 3 && (r = w_byte(w, OP_MARK)) != WR_DONE)
        return r;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((r = w_obj(w, PyTuple_GET_ITEM(obj, i))) != WR_DONE)
            return r;
    }
    /* A tuple that reached itself through a list or dict is memoized
     * by now; pickle then pops the items: leave that to it. */
    if (memo_find(w, obj) >= 0)
        return WR_DECLINE;
    if ((r = w_byte(w, n > 3 ? OP_TUPLE : small_ops[n])) != WR_DONE)
        return r;
    return memo_add(w, obj);
}

static int
w_list(writer *w, PyObject *obj)
{
    int r;
    if ((r = w_byte(w, OP_EMPTY_LIST)) != WR_DONE || (r = memo_add(w, obj)) != WR_DONE)
        return r;
    Py_ssize_t n = PyList_GET_SIZE(obj);
    if (n == 0)
        return WR_DONE;
    if (n == 1) {
        if ((r = w_obj(w, PyList_GET_ITEM(obj, 0))) != WR_DONE)
            return r;
        return w_byte(w, OP_APPEND);
    }
    Py_ssize_t i = 0;
    while (i < n) {
        if ((r = w_byte(w, OP_MARK)) != WR_DONE)
            return r;
        Py_ssize_t stop = n - i > BATCH ? i + BATCH : n;
        for (; i < stop; i++) {
            if ((r = w_obj(w, PyList_GET_ITEM(obj, i))) != WR_DONE)
                return r;
        }
        if ((r = w_byte(w, OP_APPENDS)) != WR_DONE)
            return r;
    }
    return WR_DONE;
}

static int
w_dict(writer *w, PyObject *obj)
{
    int r;
    if ((r = w_byte(w, OP_EMPTY_DICT)) != WR_DONE || (r = memo_add(w, obj)) != WR_DONE)
        return r;
    Py_ssize_t n = PyDict_GET_SIZE(obj), pos = 0;
    PyObject *key, *value;
    if (n == 0)
        return WR_DONE;
    if (n == 1) {
        PyDict_Next(obj, &pos, &key, &value);
        if ((r = w_obj(w, key)) != WR_DONE || (r = w_obj(w, value)) != WR_DONE)
            return r;
        return w_byte(w, OP_SETITEM);
    }
    /* Batches as pickle cuts them: a full last batch is followed by an
     * empty one. */
    int in_batch;
    do {
        if ((r = w_byte(w, OP_MARK)) != WR_DONE)
            return r;
        in_batch = 0;
        while (in_batch < BATCH && PyDict_Next(obj, &pos, &key, &value)) {
            if ((r = w_obj(w, key)) != WR_DONE || (r = w_obj(w, value)) != WR_DONE)
                return r;
            in_batch++;
        }
        if ((r = w_byte(w, OP_SETITEMS)) != WR_DONE)
            return r;
    } while (in_batch == BATCH);
    return WR_DONE;
}

/* Writes one object; the order of the checks is the pickler's (atoms
 * are never memoized, everything else is looked up first). */
static int
w_obj(writer *w, PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (obj == Py_None)
        return w_byte(w, OP_NONE);
    if (obj == Py_True || obj == Py_False)
        return w_byte(w, obj == Py_True ? OP_NEWTRUE : OP_NEWFALSE);
    if (tp == &PyLong_Type)
        return w_long(w, obj);
    if (tp == &PyFloat_Type)
        return w_float(w, obj);
    Py_ssize_t index = memo_find(w, obj);
    if (index >= 0)
        return w_get(w, index);
    int r;
    if (tp == &PyUnicode_Type) {
        Py_ssize_t size;
        const char *data = PyUnicode_AsUTF8AndSize(obj, &size);
        if (data == NULL) {
            /* Lone surrogates: pickle writes them its own way. */
            PyErr_Clear();
            return WR_DECLINE;
        }
        r = w_counted(w, OP_SHORT_BINUNICODE, OP_BINUNICODE, OP_BINUNICODE8,
                      data, size);
        return r == WR_DONE ? memo_add(w, obj) : r;
    }
    if (tp == &PyBytes_Type) {
        r = w_counted(w, OP_SHORT_BINBYTES, OP_BINBYTES, OP_BINBYTES8,
                      PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
        return r == WR_DONE ? memo_add(w, obj) : r;
    }
    if (w->depth >= MAX_DEPTH)
        return WR_DECLINE;
    w->depth++;
    if (tp == &PyTuple_Type)
        r = w_tuple(w, obj);
    else if (tp == &PyList_Type)
        r = w_list(w, obj);
    else if (tp == &PyDict_Type)
        r = w_dict(w, obj);
    else
        r = WR_DECLINE;
    w->depth--;
    return r;
}

int
mp_pickle_encode(PyObject *obj, size_t room, char *stackbuf, size_t stacksize,
                 char **out, size_t *outlen)
{
    writer w;
    w.buf = w.stackbuf = stackbuf;
    w.cap = stacksize;
    w.len = room + PREAMBLE;
    /* The body must stay shorter than one frame. */
    w.limit = room + PREAMBLE + FRAME_TARGET - 1;
    w.memo = w.memo_inline;     /* cleared by the first memo_add */
    w.memo_mask = MEMO_INLINE - 1;
    w.memo_count = 0;
    w.depth = 0;
    assert(stacksize >= room + PREAMBLE + 16);

    int r = w_obj(&w, obj);
    if (r == WR_DONE)
        r = w_byte(&w, OP_STOP);
    if (w.memo != w.memo_inline)
        PyMem_Free(w.memo);
    if (r != WR_DONE) {
        if (w.buf != stackbuf)
            PyMem_Free(w.buf);
        return r;
    }
    char *p = w.buf + room;
    size_t body = w.len - room - PREAMBLE;
    p[0] = (char)OP_PROTO;
    p[1] = PROTOCOL;
    if (body >= FRAME_MIN) {
        p[2] = (char)OP_FRAME;
        put_le64(p + 3, (uint64_t)body);
    }
    else {
        memmove(p + 2, p + PREAMBLE, body);
        w.len -= PREAMBLE - 2;
    }
    *out = w.buf;
    *outlen = w.len;
    return WR_DONE;
}

void
mp_pickle_release(char *out, char *stackbuf)
{
    if (out != stackbuf)
        PyMem_Free(out);
}

/* ------------------------------------------------------------------ */
/* Reading */

#define STACK_INLINE 64
#define MARKS_INLINE 16
#define RMEMO_INLINE 32

typedef struct {
    PyObject **stack;
    Py_ssize_t sp, stack_cap;
    Py_ssize_t *marks;
    Py_ssize_t nmarks, marks_cap;
    PyObject **memo;
    Py_ssize_t nmemo, memo_cap;
    PyObject *stack_inline[STACK_INLINE];
    Py_ssize_t marks_inline[MARKS_INLINE];
    PyObject *memo_inline[RMEMO_INLINE];
} reader;

/* Grows one of the reader's arrays (elements of `size` bytes).  Returns
 * 0, or -1 (no exception: the caller falls back). */
static int
r_grow(void **arr, Py_ssize_t *cap, void *inline_arr, size_t size)
{
    Py_ssize_t ncap = *cap * 2;
    void *narr;
    if (*arr == inline_arr) {
        narr = PyMem_Malloc((size_t)ncap * size);
        if (narr != NULL)
            memcpy(narr, *arr, (size_t)*cap * size);
    }
    else {
        narr = PyMem_Realloc(*arr, (size_t)ncap * size);
    }
    if (narr == NULL)
        return -1;
    *arr = narr;
    *cap = ncap;
    return 0;
}

/* Pushes a new reference (NULL: failed, fall back). */
static int
r_push(reader *r, PyObject *obj)
{
    if (obj == NULL)
        return -1;
    if (r->sp == r->stack_cap &&
            r_grow((void **)&r->stack, &r->stack_cap, r->stack_inline,
                   sizeof(PyObject *)) < 0) {
        Py_DECREF(obj);
        return -1;
    }
    r->stack[r->sp++] = obj;
    return 0;
}

/* Items above the innermost mark. */
static inline Py_ssize_t
r_avail(reader *r)
{
    return r->sp - (r->nmarks ? r->marks[r->nmarks - 1] : 0);
}

static inline uint32_t
get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static inline uint64_t
get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Builds a tuple of the top `n` stack items (their references move). */
static PyObject *
r_tuple(reader *r, Py_ssize_t n)
{
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    r->sp -= n;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, r->stack[r->sp + i]);
    return t;
}

/* Decodes `len` bytes.  Returns a new reference, or NULL -- never with
 * an exception set -- when the data holds anything this reader does
 * not handle or is not a well-formed pickle of it. */
static PyObject *
decode(reader *r, const unsigned char *p, const unsigned char *end)
{
#define NEED(n) do { if ((size_t)(end - p) < (size_t)(n)) goto fail; } while (0)
    while (p < end) {
        unsigned char op = *p++;
        PyObject *obj;
        uint64_t n;
        switch (op) {
        case OP_PROTO:
            NEED(1);
            if (*p++ > HIGHEST_READ_PROTOCOL)
                goto fail;
            break;
        case OP_FRAME:
            NEED(8);
            if (get_le64(p) > (uint64_t)(end - p - 8))
                goto fail;
            p += 8;
            break;
        case OP_NONE:
            Py_INCREF(Py_None);
            if (r_push(r, Py_None) < 0)
                goto fail;
            break;
        case OP_NEWTRUE:
        case OP_NEWFALSE:
            obj = op == OP_NEWTRUE ? Py_True : Py_False;
            Py_INCREF(obj);
            if (r_push(r, obj) < 0)
                goto fail;
            break;
        case OP_BININT1:
            NEED(1);
            if (r_push(r, PyLong_FromLong(p[0])) < 0)
                goto fail;
            p += 1;
            break;
        case OP_BININT2:
            NEED(2);
            if (r_push(r, PyLong_FromLong((long)p[0] | ((long)p[1] << 8))) < 0)
                goto fail;
            p += 2;
            break;
        case OP_BININT:
            NEED(4);
            if (r_push(r, PyLong_FromLong((long)(int32_t)get_le32(p))) < 0)
                goto fail;
            p += 4;
            break;
        case OP_LONG1: {
            NEED(1);
            unsigned int nb = *p++;
            if (nb > 8)
                goto fail;
            NEED(nb);
            uint64_t u = 0;
            for (unsigned int i = nb; i > 0; i--)
                u = (u << 8) | p[i - 1];
            if (nb > 0 && nb < 8 && (p[nb - 1] & 0x80))
                u |= ~(uint64_t)0 << (8 * nb);      /* sign-extend */
            p += nb;
            if (r_push(r, PyLong_FromLongLong((long long)u)) < 0)
                goto fail;
            break;
        }
        case OP_BINFLOAT: {
            NEED(8);
            uint64_t bits = 0;
            for (int i = 0; i < 8; i++)
                bits = (bits << 8) | p[i];
            double d;
            memcpy(&d, &bits, 8);
            p += 8;
            if (r_push(r, PyFloat_FromDouble(d)) < 0)
                goto fail;
            break;
        }
        case OP_SHORT_BINUNICODE:
        case OP_SHORT_BINBYTES:
            NEED(1);
            n = *p++;
            goto counted;
        case OP_BINUNICODE:
        case OP_BINBYTES:
            NEED(4);
            n = get_le32(p);
            p += 4;
            goto counted;
        case OP_BINUNICODE8:
        case OP_BINBYTES8:
            NEED(8);
            n = get_le64(p);
            p += 8;
        counted:
            if (n > (uint64_t)(end - p))
                goto fail;
            if (op == OP_SHORT_BINBYTES || op == OP_BINBYTES || op == OP_BINBYTES8)
                obj = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
            else
                obj = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n,
                                           "surrogatepass");
            p += n;
            if (r_push(r, obj) < 0)
                goto fail;
            break;
        case OP_EMPTY_TUPLE:
            if (r_push(r, PyTuple_New(0)) < 0)
                goto fail;
            break;
        case OP_TUPLE1:
        case OP_TUPLE2:
        case OP_TUPLE3: {
            Py_ssize_t k = op - OP_TUPLE1 + 1;
            if (r_avail(r) < k || r_push(r, r_tuple(r, k)) < 0)
                goto fail;
            break;
        }
        case OP_MARK:
            if (r->nmarks == r->marks_cap &&
                    r_grow((void **)&r->marks, &r->marks_cap, r->marks_inline,
                           sizeof(Py_ssize_t)) < 0)
                goto fail;
            r->marks[r->nmarks++] = r->sp;
            break;
        case OP_TUPLE: {
            if (r->nmarks == 0)
                goto fail;
            Py_ssize_t k = r->sp - r->marks[--r->nmarks];
            if (r_push(r, r_tuple(r, k)) < 0)
                goto fail;
            break;
        }
        case OP_EMPTY_LIST:
            if (r_push(r, PyList_New(0)) < 0)
                goto fail;
            break;
        case OP_EMPTY_DICT:
            if (r_push(r, PyDict_New()) < 0)
                goto fail;
            break;
        case OP_APPEND:
        case OP_SETITEM: {
            Py_ssize_t k = op == OP_APPEND ? 1 : 2;
            if (r_avail(r) < k + 1)
                goto fail;
            PyObject *target = r->stack[r->sp - k - 1];
            int rc;
            if (op == OP_APPEND)
                rc = PyList_CheckExact(target) ?
                     PyList_Append(target, r->stack[r->sp - 1]) : -1;
            else
                rc = PyDict_CheckExact(target) ?
                     PyDict_SetItem(target, r->stack[r->sp - 2],
                                    r->stack[r->sp - 1]) : -1;
            if (rc < 0)
                goto fail;
            for (; k > 0; k--)
                Py_DECREF(r->stack[--r->sp]);
            break;
        }
        case OP_APPENDS:
        case OP_SETITEMS: {
            if (r->nmarks == 0)
                goto fail;
            Py_ssize_t base = r->marks[--r->nmarks];
            if (base < 1 || base - 1 < (r->nmarks ? r->marks[r->nmarks - 1] : 0))
                goto fail;
            PyObject *target = r->stack[base - 1];
            int rc = 0;
            if (op == OP_APPENDS) {
                if (!PyList_CheckExact(target))
                    goto fail;
                for (Py_ssize_t i = base; i < r->sp && rc == 0; i++)
                    rc = PyList_Append(target, r->stack[i]);
            }
            else {
                if (!PyDict_CheckExact(target) || (r->sp - base) % 2)
                    goto fail;
                for (Py_ssize_t i = base; i < r->sp && rc == 0; i += 2)
                    rc = PyDict_SetItem(target, r->stack[i], r->stack[i + 1]);
            }
            if (rc < 0)
                goto fail;
            while (r->sp > base)
                Py_DECREF(r->stack[--r->sp]);
            break;
        }
        case OP_MEMOIZE:
            if (r_avail(r) < 1)
                goto fail;
            if (r->nmemo == r->memo_cap &&
                    r_grow((void **)&r->memo, &r->memo_cap, r->memo_inline,
                           sizeof(PyObject *)) < 0)
                goto fail;
            obj = r->stack[r->sp - 1];
            Py_INCREF(obj);
            r->memo[r->nmemo++] = obj;
            break;
        case OP_BINGET:
        case OP_LONG_BINGET:
            if (op == OP_BINGET) {
                NEED(1);
                n = *p++;
            }
            else {
                NEED(4);
                n = get_le32(p);
                p += 4;
            }
            if (n >= (uint64_t)r->nmemo)
                goto fail;
            obj = r->memo[n];
            Py_INCREF(obj);
            if (r_push(r, obj) < 0)
                goto fail;
            break;
        case OP_STOP:
            /* Exactly one object, nothing left over. */
            if (p != end || r->nmarks != 0 || r->sp != 1)
                goto fail;
            r->sp = 0;
            return r->stack[0];
        default:
            goto fail;
        }
    }
fail:
    PyErr_Clear();
    return NULL;
#undef NEED
}

PyObject *
mp_pickle_decode(const char *data, size_t len)
{
    reader r;
    r.stack = r.stack_inline;
    r.sp = 0;
    r.stack_cap = STACK_INLINE;
    r.marks = r.marks_inline;
    r.nmarks = 0;
    r.marks_cap = MARKS_INLINE;
    r.memo = r.memo_inline;
    r.nmemo = 0;
    r.memo_cap = RMEMO_INLINE;

    PyObject *res = decode(&r, (const unsigned char *)data,
                           (const unsigned char *)data + len);
    while (r.sp > 0)
        Py_DECREF(r.stack[--r.sp]);
    for (Py_ssize_t i = 0; i < r.nmemo; i++)
        Py_DECREF(r.memo[i]);
    if (r.stack != r.stack_inline)
        PyMem_Free(r.stack);
    if (r.marks != r.marks_inline)
        PyMem_Free(r.marks);
    if (r.memo != r.memo_inline)
        PyMem_Free(r.memo);
    return res;
}

/* ------------------------------------------------------------------ */
/* With the fallback: the full pickler, registered from Python. */

/* Makes sure the full pickler is known: registered by
 * multiprocessing_c.reduction when imported, or (for another instance
 * of this module) taken from it.  0, or -1 with an exception set. */
static int
need_fallbacks(mp_state *st)
{
    if (st->pickle_dumps != NULL && st->pickle_loads != NULL)
        return 0;
    PyObject *mod = PyImport_ImportModule("multiprocessing_c.reduction");
    if (mod == NULL)
        return -1;
    if (st->pickle_dumps == NULL || st->pickle_loads == NULL) {
        PyObject *dumps = PyObject_GetAttrString(mod, "_pooled_dumps");
        PyObject *loads = dumps ? PyObject_GetAttrString(mod, "_full_loads") : NULL;
        if (loads == NULL) {
            Py_XDECREF(dumps);
            Py_DECREF(mod);
            return -1;
        }
        Py_XSETREF(st->pickle_dumps, dumps);
        Py_XSETREF(st->pickle_loads, loads);
    }
    Py_DECREF(mod);
    return 0;
}

PyObject *
mp_pickle_dumps_fallback(mp_state *st, PyObject *obj)
{
    if (need_fallbacks(st) < 0)
        return NULL;
    return PyObject_CallOneArg(st->pickle_dumps, obj);
}

PyObject *
mp_pickle_loads(mp_state *st, const char *data, size_t len, PyObject *owner)
{
    PyObject *obj = mp_pickle_decode(data, len);
    if (obj != NULL)
        return obj;
    if (need_fallbacks(st) < 0)
        return NULL;
    if (owner != NULL)
        return PyObject_CallOneArg(st->pickle_loads, owner);
    PyObject *bytes = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (bytes == NULL)
        return NULL;
    obj = PyObject_CallOneArg(st->pickle_loads, bytes);
    Py_DECREF(bytes);
    return obj;
}

#define DUMPS_STACK 2048

PyDoc_STRVAR(pickling_dumps__doc__,
"dumps(obj, /)\n--\n\n"
"Return `obj` pickled as ForkingPickler pickles it, as bytes (plain data\n"
"is written here in C, anything else by the registered full pickler).");

static PyObject *
pickling_dumps(PyObject *module, PyObject *obj)
{
    char stackbuf[DUMPS_STACK];
    char *out;
    size_t len;
    int r = mp_pickle_encode(obj, 0, stackbuf, sizeof(stackbuf), &out, &len);
    if (r < 0)
        return NULL;
    if (r == 0)
        return mp_pickle_dumps_fallback(mp_get_state(module), obj);
    PyObject *res = PyBytes_FromStringAndSize(out, (Py_ssize_t)len);
    mp_pickle_release(out, stackbuf);
    return res;
}

PyDoc_STRVAR(pickling_loads__doc__,
"loads(data, /)\n--\n\n"
"Return the object pickled in the bytes-like `data`.");

static PyObject *
pickling_loads(PyObject *module, PyObject *data)
{
    Py_buffer view;
    if (PyBytes_CheckExact(data))
        return mp_pickle_loads(mp_get_state(module), PyBytes_AS_STRING(data),
                               (size_t)PyBytes_GET_SIZE(data), data);
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = mp_pickle_decode(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (res != NULL)
        return res;
    mp_state *st = mp_get_state(module);
    if (need_fallbacks(st) < 0)
        return NULL;
    return PyObject_CallOneArg(st->pickle_loads, data);
}

PyDoc_STRVAR(pickling_set_fallbacks__doc__,
"_set_pickle_fallbacks(dumps, loads, /)\n--\n\n"
"Register the full pickler's dumps(obj) and loads(data), used for what\n"
"the C fast path does not handle.");

static PyObject *
pickling_set_fallbacks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "_set_pickle_fallbacks() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "dumps and loads must be callable");
        return NULL;
    }
    mp_state *st = mp_get_state(module);
    Py_INCREF(args[0]);
    Py_XSETREF(st->pickle_dumps, args[0]);
    Py_INCREF(args[1]);
    Py_XSETREF(st->pickle_loads, args[1]);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pickling_fast_dumps__doc__,
"_fast_dumps(obj, /)\n--\n\n"
"Return the C fast path's pickle of `obj` as bytes, or None if it does\n"
"not handle `obj` (for tests).");

static PyObject *
pickling_fast_dumps(PyObject *module, PyObject *obj)
{
    (void)module;
    char stackbuf[DUMPS_STACK];
    char *out;
    size_t len;
    int r = mp_pickle_encode(obj, 0, stackbuf, sizeof(stackbuf), &out, &len);
    if (r < 0)
        return NULL;
    if (r == 0)
        Py_RETURN_NONE;
    PyObject *res = PyBytes_FromStringAndSize(out, (Py_ssize_t)len);
    mp_pickle_release(out, stackbuf);
    return res;
}

PyDoc_STRVAR(pickling_fast_loads__doc__,
"_fast_loads(data, /)\n--\n\n"
"Return (True, obj) if the C fast path reads the pickle `data`, else\n"
"(False, None) (for tests).");

static PyObject *
pickling_fast_loads(PyObject *module, PyObject *data)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = mp_pickle_decode(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (res == NULL)
        return Py_BuildValue("(OO)", Py_False, Py_None);
    return Py_BuildValue("(ON)", Py_True, res);
}

static PyMethodDef pickling_functions[] = {
    {"dumps", pickling_dumps, METH_O, pickling_dumps__doc__},
    {"loads", pickling_loads, METH_O, pickling_loads__doc__},
    {"_set_pickle_fallbacks", (PyCFunction)(void (*)(void))pickling_set_fallbacks,
     METH_FASTCALL, pickling_set_fallbacks__doc__},
    {"_fast_dumps", pickling_fast_dumps, METH_O, pickling_fast_dumps__doc__},
    {"_fast_loads", pickling_fast_loads, METH_O, pickling_fast_loads__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_pickling_init(PyObject *module, mp_state *st)
{
    st->pickle_dumps = NULL;
    st->pickle_loads = NULL;
    return PyModule_AddFunctions(module, pickling_functions);
}
