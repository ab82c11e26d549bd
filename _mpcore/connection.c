/* Connection: length-prefixed messages over one file descriptor (a pipe
 * end or a stream socket).
 *
 * Wire format (the same as the stdlib's multiprocessing.connection, so
 * both can talk to each other): each message is a header then the
 * payload.  The header is a 4-byte big-endian signed length; a payload
 * longer than 0x7fffffff bytes gets the header -1 followed by an 8-byte
 * big-endian unsigned length instead.
 *
 * Reads never go past the end of the current frame: several processes
 * may share one read end (a queue), and whoever reads next must find a
 * frame boundary.  Writes send header and payload with one writev().
 */
#include "mpcore.h"

#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    int fd;                 /* -1 once closed */
    char readable;
    char writable;
    char is_socket;         /* fd is a socket: MSG_DONTWAIT fast paths */
    unsigned char recv_skip;    /* recv_bytes calls left before retrying
                                 * the non-blocking read after a miss */
    unsigned char recv_backoff; /* the current length of that pause */
} ConnObject;

#define Conn_CAST(op) ((ConnObject *)(op))

#define SHORT_MAX 0x7fffffffLL
/* Payloads up to this size are read straight into the result; larger
 * ones into a buffer that grows only as data really arrives, so a bogus
 * length header cannot make us allocate more than it has sent. */
#define DIRECT_LIMIT ((uint64_t)64 << 20)
/* Linux caps a single read/write at about this much anyway. */
#define MAX_IO ((size_t)0x7ffff000)
/* recv_bytes reads header and payload in one GIL release up to this size
 * (into a stack buffer, then one copy into the result). */
#define SMALL_FRAME 1024

/* ------------------------------------------------------------------ */
/* Argument parsing for METH_FASTCALL | METH_KEYWORDS: positional-or-
 * keyword parameters `names`; out[i] is a borrowed reference or NULL when
 * not given.  Returns 0, or -1 with TypeError set. */
static int
conn_parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames, const char *const *names, int nnames,
                int nrequired, PyObject **out)
{
    for (int i = 0; i < nnames; i++)
        out[i] = NULL;
    if (nargs > nnames) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most %d arguments (%zd given)",
                     fname, nnames, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int found = 0;
        for (int i = 0; i < nnames; i++) {
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0) {
                if (out[i] != NULL) {
                    PyErr_Format(PyExc_TypeError,
                                 "%s() got multiple values for argument '%s'",
                                 fname, names[i]);
                    return -1;
                }
                out[i] = args[nargs + k];
                found = 1;
                break;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'",
                         fname, key);
            return -1;
        }
    }
    for (int i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError,
                         "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    }
    return 0;
}

/* Converts an optional non-negative size argument (None/NULL -> dflt).
 * Returns 0, or -1 with an exception set. */
static int
conn_ssize_arg(PyObject *obj, Py_ssize_t dflt, Py_ssize_t *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = dflt;
        return 0;
    }
    Py_ssize_t v = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Raw I/O.  Each helper is called with the GIL held and releases it
 * around every syscall; EINTR is retried unless a signal handler raised. */

/* Writes all of iov[0..iovcnt).  Modifies iov.  Returns 0, or -1 with an
 * exception set. */
static int
conn_writev_all(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        ssize_t n;
        int err, async_err;
        MP_RETRY_EINTR(n, writev(fd, iov, iovcnt), err, async_err);
        if (n < 0) {
            if (!async_err)
                mp_set_oserror(err);
            return -1;
        }
        size_t done = (size_t)n;
        while (iovcnt > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return 0;
}

/* Reads up to `len` bytes, stopping early only at end of file.  Returns
 * the count read, or -1 with an exception set. */
static Py_ssize_t
conn_read_full(int fd, char *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        size_t chunk = len - got;
        if (chunk > MAX_IO)
            chunk = MAX_IO;
        ssize_t n;
        int err, async_err;
        MP_RETRY_EINTR(n, read(fd, buf + got, chunk), err, async_err);
        if (n < 0) {
            if (!async_err)
                mp_set_oserror(err);
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (Py_ssize_t)got;
}

/* The signed big-endian 32-bit value at p (a short frame header). */
static inline int32_t
conn_be32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                     ((uint32_t)p[2] << 8) | (uint32_t)p[3]);
}

static PyObject *
conn_truncated(uint64_t got, uint64_t want)
{
    PyErr_Format(PyExc_OSError,
                 "got end of file during message (%llu of %llu bytes)",
                 (unsigned long long)got, (unsigned long long)want);
    return NULL;
}

/* Completes a frame header of which the first `have` (< 4) bytes are
 * already in hdr[].  Returns 1 with *size set, 0 at a clean end of file
 * (before any byte of the frame; no exception set), or -1 with an
 * exception set. */
static int
conn_finish_header(ConnObject *self, unsigned char *hdr, Py_ssize_t have,
                   uint64_t *size)
{
    Py_ssize_t n = conn_read_full(self->fd, (char *)hdr + have, (size_t)(4 - have));
    if (n < 0)
        return -1;
    n += have;
    if (n == 0)
        return 0;
    if (n < 4) {
        conn_truncated((uint64_t)n, 4);
        return -1;
    }
    int32_t len = conn_be32(hdr);
    if (len >= 0) {
        *size = (uint64_t)len;
        return 1;
    }
    if (len != -1) {
        PyErr_Format(PyExc_OSError, "bad message length (header %d)", (int)len);
        return -1;
    }
    n = conn_read_full(self->fd, (char *)hdr, 8);
    if (n < 0)
        return -1;
    if (n < 8) {
        conn_truncated((uint64_t)n + 4, 12);
        return -1;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | hdr[i];
    if (v > (uint64_t)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_OSError, "bad message length (%llu bytes)",
                     (unsigned long long)v);
        return -1;
    }
    *size = v;
    return 1;
}

static int
conn_read_header(ConnObject *self, uint64_t *size)
{
    unsigned char hdr[8];
    return conn_finish_header(self, hdr, 0, size);
}

/* Reads the rest of a `size`-byte payload whose first `have` bytes are
 * in `prefix` into a new bytes object (have > 0 only for size <=
 * DIRECT_LIMIT).  Returns a new reference, or NULL with an exception set. */
static PyObject *
conn_read_payload_from(ConnObject *self, uint64_t size, const char *prefix,
                       size_t have)
{
    if (size <= DIRECT_LIMIT) {
        PyObject *res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
        if (res == NULL)
            return NULL;
        if (have)
            memcpy(PyBytes_AS_STRING(res), prefix, have);
        Py_ssize_t n = conn_read_full(self->fd, PyBytes_AS_STRING(res) + have,
                                      (size_t)size - have);
        if (n < 0 || (uint64_t)n + have < size) {
            if (n >= 0)
                conn_truncated((uint64_t)n + have, size);
            Py_DECREF(res);
            return NULL;
        }
        return res;
    }
    /* Large: grow geometrically while the data keeps coming, then copy
     * once into the result. */
    size_t cap = (size_t)DIRECT_LIMIT, got = 0;
    char *buf = PyMem_RawMalloc(cap);
    if (buf == NULL)
        return PyErr_NoMemory();
    while (got < size) {
        if (got == cap) {
            size_t ncap = cap * 2 < size ? cap * 2 : (size_t)size;
            char *nbuf = PyMem_RawRealloc(buf, ncap);
            if (nbuf == NULL) {
                PyMem_RawFree(buf);
                return PyErr_NoMemory();
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t want = cap - got;
        Py_ssize_t n = conn_read_full(self->fd, buf + got, want);
        if (n < 0) {
            PyMem_RawFree(buf);
            return NULL;
        }
        got += (size_t)n;
        if ((size_t)n < want) {
            PyMem_RawFree(buf);
            return conn_truncated(got, size);
        }
    }
    PyObject *res = PyBytes_FromStringAndSize(buf, (Py_ssize_t)size);
    PyMem_RawFree(buf);
    return res;
}

static PyObject *
conn_read_payload(ConnObject *self, uint64_t size)
{
    return conn_read_payload_from(self, size, NULL, 0);
}

/* A frame longer than the caller accepts: the stream is no longer at a
 * frame boundary, so the connection stops being readable (and is closed
 * if that leaves it useless).  Returns NULL with OSError set. */
static void conn_close_fd(ConnObject *self);

static PyObject *
conn_bad_length(ConnObject *self, uint64_t size, Py_ssize_t maxlength)
{
    if (self->writable)
        self->readable = 0;
    else
        conn_close_fd(self);
    PyErr_Format(PyExc_OSError,
                 "bad message length (%llu bytes, maxlength %zd)",
                 (unsigned long long)size, maxlength);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Checks shared by the methods; each returns 0 or -1 with OSError set. */

static int
conn_check_readable(ConnObject *self)
{
    if (self->fd < 0) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return -1;
    }
    if (!self->readable) {
        PyErr_SetString(PyExc_OSError, "connection is write-only");
        return -1;
    }
    return 0;
}

static int
conn_check_writable(ConnObject *self)
{
    if (self->fd < 0) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return -1;
    }
    if (!self->writable) {
        PyErr_SetString(PyExc_OSError, "connection is read-only");
        return -1;
    }
    return 0;
}

static void
conn_close_fd(ConnObject *self)
{
    int fd = self->fd;
    if (fd < 0)
        return;
    self->fd = -1;
    /* No EINTR retry: on Linux the fd is gone whatever close() returns. */
    Py_BEGIN_ALLOW_THREADS
    close(fd);
    Py_END_ALLOW_THREADS
}

/* Raises multiprocessing_c.context.BufferTooShort(msg).  The class lives
 * in Python (like the stdlib's); it is looked up only on this rare path. */
static PyObject *
conn_buffer_too_short(PyObject *msg)
{
    PyObject *ctx = PyImport_ImportModule("multiprocessing_c.context");
    if (ctx == NULL)
        return NULL;
    PyObject *cls = PyObject_GetAttrString(ctx, "BufferTooShort");
    Py_DECREF(ctx);
    if (cls == NULL)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(cls, msg);
    if (exc != NULL) {
        PyErr_SetObject(cls, exc);
        Py_DECREF(exc);
    }
    Py_DECREF(cls);
    return NULL;
}

/* Whether fd is a socket (false if it cannot be told). */
static char
conn_fd_is_socket(int fd)
{
    struct stat st;
    return (char)(fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode));
}

/* ------------------------------------------------------------------ */
/* Type slots */

static PyObject *
conn_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"handle", "readable", "writable", NULL};
    int fd, readable = 1, writable = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|pp:Connection", kwlist,
                                     &fd, &readable, &writable))
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "invalid handle");
        return NULL;
    }
    if (!readable && !writable) {
        PyErr_SetString(PyExc_ValueError,
                        "at least one of `readable` and `writable` must be True");
        return NULL;
    }
    ConnObject *self = (ConnObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = fd;
    self->readable = (char)readable;
    self->writable = (char)writable;
    self->is_socket = conn_fd_is_socket(fd);
    return (PyObject *)self;
}

static int
conn_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    return 0;
}

/* An unreferenced Connection closes its fd, as the stdlib's does. */
static void
conn_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    ConnObject *self = Conn_CAST(op);
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------------ */
/* Methods */

/* Writes the 4- or 12-byte header for a `size`-byte payload into hdr;
 * returns its length. */
static size_t
conn_put_header(unsigned char *hdr, uint64_t size)
{
    if (size <= (uint64_t)SHORT_MAX) {
        hdr[0] = (unsigned char)(size >> 24);
        hdr[1] = (unsigned char)(size >> 16);
        hdr[2] = (unsigned char)(size >> 8);
        hdr[3] = (unsigned char)size;
        return 4;
    }
    memset(hdr, 0xff, 4);
    for (int i = 0; i < 8; i++)
        hdr[4 + i] = (unsigned char)(size >> (56 - 8 * i));
    return 12;
}

/* Writes all of iov[0..iovcnt) (one frame) to the connection.  Modifies
 * iov.  Returns 0, or -1 with an exception set. */
static int
conn_write_frame(ConnObject *self, struct iovec *iov, int iovcnt)
{
    /* A Connection closed by another thread meanwhile fails with EBADF
     * at worst: self->fd is read once, under the GIL. */
    int fd = self->fd;
    if (self->is_socket) {
        /* Try first without blocking and without releasing the GIL:
         * a small message usually fits in the socket buffer, and giving
         * up the GIL can cost a thread switch to get it back. */
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)iovcnt;
        ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT);  /* cpylint-ignore: never blocks */
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            mp_set_oserror(errno);
            return -1;
        }
        size_t done = n > 0 ? (size_t)n : 0;
        while (iovcnt > 0 && done >= iov->iov_len) {
            done -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + done;
            iov->iov_len -= done;
        }
    }
    return iovcnt ? conn_writev_all(fd, iov, iovcnt) : 0;
}

/* Sends buf[0..size) as one frame (header and payload in one write
 * where they fit).  Returns 0, or -1 with an exception set. */
static int
conn_send_payload(ConnObject *self, const char *buf, Py_ssize_t size)
{
    unsigned char hdr[12];
    struct iovec iov[2];
    iov[0].iov_base = hdr;
    iov[0].iov_len = conn_put_header(hdr, (uint64_t)size);
    iov[1].iov_base = (char *)buf;
    iov[1].iov_len = (size_t)size;
    return conn_write_frame(self, iov, size ? 2 : 1);
}

PyDoc_STRVAR(conn_send_bytes__doc__,
"send_bytes($self, buf, offset=0, size=None)\n--\n\n"
"Send the bytes of the bytes-like object `buf` as one message; `offset`\n"
"and `size` (in bytes) select a slice of it.");

static PyObject *
conn_send_bytes(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset", "size"};
    ConnObject *self = Conn_CAST(op);
    PyObject *a[3];
    Py_ssize_t offset, size;
    Py_buffer view;

    if (conn_parse_args("send_bytes", args, nargs, kwnames, names, 3, 1, a) < 0)
        return NULL;
    if (conn_check_writable(self) < 0)
        return NULL;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (conn_ssize_arg(a[1], 0, &offset) < 0)
        goto fail;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "offset is negative");
        goto fail;
    }
    if (offset > view.len) {
        PyErr_SetString(PyExc_ValueError, "buffer length < offset");
        goto fail;
    }
    if (conn_ssize_arg(a[2], view.len - offset, &size) < 0)
        goto fail;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size is negative");
        goto fail;
    }
    if (size > view.len - offset) {
        PyErr_SetString(PyExc_ValueError, "buffer length < offset + size");
        goto fail;
    }
    int rc = conn_send_payload(self, (char *)view.buf + offset, size);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;

fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* send() pickles into a stack buffer of this size first (larger pickles
 * go to the heap); the frame header goes in front of the pickle, so the
 * whole message leaves in one write. */
#define SEND_STACK 2048

PyDoc_STRVAR(conn_send__doc__,
"send($self, obj, /)\n--\n\n"
"Send a picklable object (pickled with multiprocessing_c's\n"
"ForkingPickler).");

static PyObject *
conn_send(PyObject *op, PyObject *obj)
{
    ConnObject *self = Conn_CAST(op);
    char stackbuf[SEND_STACK];
    char *out;
    size_t len;

    if (conn_check_writable(self) < 0)
        return NULL;
    int r = mp_pickle_encode(obj, 4, stackbuf, sizeof(stackbuf), &out, &len);
    if (r < 0)
        return NULL;
    if (r > 0) {
        /* The pickle is shorter than 64 KiB: a short header. */
        conn_put_header((unsigned char *)out, (uint64_t)(len - 4));
        struct iovec iov = {.iov_base = out, .iov_len = len};
        int rc = conn_write_frame(self, &iov, 1);
        mp_pickle_release(out, stackbuf);
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    mp_state *st = mp_get_state_by_type(Py_TYPE(op));
    if (st == NULL)
        return NULL;
    PyObject *data = mp_pickle_dumps_fallback(st, obj);
    if (data == NULL)
        return NULL;
    Py_buffer view;
    int rc = PyObject_GetBuffer(data, &view, PyBUF_SIMPLE);
    Py_DECREF(data);
    if (rc < 0)
        return NULL;
    /* Pickling ran Python code, which may have closed us. */
    rc = conn_check_writable(self);
    if (rc == 0)
        rc = conn_send_payload(self, view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Receives one frame of at most `maxlength` bytes (-1: any).  Returns a
 * new bytes object; or Py_None, not a new reference, when the payload
 * (of at most SMALL_FRAME bytes) was read into small[0..*smalllen); or
 * NULL with an exception set. */
static PyObject *
conn_recv_frame(ConnObject *self, Py_ssize_t maxlength, char *small,
                Py_ssize_t *smalllen)
{
    uint64_t size;

    /* Fast path: the header and a payload of up to SMALL_FRAME bytes,
     * read exactly (never past the frame), first without blocking under
     * the GIL (sockets only), else in one GIL release.  Whatever it
     * leaves undone (a short read, EINTR, a large frame) the general
     * code below finishes.  n1/n2: results of the header and payload
     * reads (n2 == -2: payload not attempted). */
    unsigned char hdr[8];
    ssize_t n1 = -1, n2 = -2;
    int32_t len = -1;
    int err = EAGAIN;
    int fd = self->fd;
    if (self->is_socket && self->recv_skip > 0) {
        self->recv_skip--;
    }
    else if (self->is_socket) {
        /* First without blocking and with the GIL held (see send_bytes):
         * a message that is already there costs no GIL round trip.  In
         * ping-pong traffic the message is rarely there yet, so after a
         * miss the next few calls skip the attempt (doubling, up to 32). */
        n1 = recv(fd, hdr, 4, MSG_DONTWAIT);   /* cpylint-ignore: never blocks */
        err = errno;
        if (n1 < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
            self->recv_backoff = self->recv_backoff ? self->recv_backoff * 2 : 1;
            if (self->recv_backoff > 32)
                self->recv_backoff = 32;
            self->recv_skip = self->recv_backoff;
        }
        else {
            self->recv_backoff = 0;
        }
        if (n1 == 4) {
            len = conn_be32(hdr);
            if (len >= 0 && len <= SMALL_FRAME &&
                    (maxlength < 0 || len <= maxlength)) {
                n2 = len ? recv(fd, small, (size_t)len, MSG_DONTWAIT) : 0;  /* cpylint-ignore */
                err = errno;
                if (n2 < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
                    n2 = -1;
                    err = EAGAIN;       /* nothing of the payload yet */
                }
            }
        }
    }
    if (n1 < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
        Py_BEGIN_ALLOW_THREADS
        n1 = read(fd, hdr, 4);
        err = errno;
        if (n1 == 4) {
            len = conn_be32(hdr);
            if (len >= 0 && len <= SMALL_FRAME &&
                    (maxlength < 0 || len <= maxlength)) {
                n2 = len ? read(fd, small, (size_t)len) : 0;
                err = errno;
            }
        }
        Py_END_ALLOW_THREADS
    }
    if (n2 >= 0 && n2 == len) {
        *smalllen = len;
        return Py_None;
    }
    if (n1 < 4) {
        if (n1 < 0) {
            if (err != EINTR)
                return mp_set_oserror(err);
            if (PyErr_CheckSignals() < 0)
                return NULL;
            n1 = 0;
        }
        else if (n1 == 0) {
            PyErr_SetNone(PyExc_EOFError);
            return NULL;
        }
        int r = conn_finish_header(self, hdr, n1, &size);
        if (r < 0)
            return NULL;
        if (r == 0) {
            PyErr_SetNone(PyExc_EOFError);
            return NULL;
        }
    }
    else if (n2 == -1) {
        /* The payload read took nothing: failed, interrupted, or (when
         * not blocking) nothing there yet. */
        if (err != EINTR && err != EAGAIN)
            return mp_set_oserror(err);
        if (err == EINTR && PyErr_CheckSignals() < 0)
            return NULL;
        return conn_read_payload(self, (uint64_t)len);
    }
    else if (n2 >= 0) {
        /* A short read of a small payload: finish it. */
        if (n2 == 0)
            return conn_truncated(0, (uint64_t)len);
        return conn_read_payload_from(self, (uint64_t)len, small, (size_t)n2);
    }
    else if (len == -1) {
        /* The long header form: its 8-byte length follows. */
        if (conn_finish_header(self, hdr, 4, &size) < 0)
            return NULL;
    }
    else if (len < 0) {
        PyErr_Format(PyExc_OSError, "bad message length (header %d)", (int)len);
        return NULL;
    }
    else {
        size = (uint64_t)len;   /* more than the fast path takes */
    }
    if (maxlength >= 0 && size > (uint64_t)maxlength)
        return conn_bad_length(self, size, maxlength);
    return conn_read_payload(self, size);
}

PyDoc_STRVAR(conn_recv_bytes__doc__,
"recv_bytes($self, maxlength=None)\n--\n\n"
"Receive one message as bytes, blocking until it arrives.  Raises\n"
"EOFError when the other end closed at a message boundary, and OSError\n"
"if the message is longer than `maxlength` (the connection then stops\n"
"being readable).");

static PyObject *
conn_recv_bytes(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    static const char *const names[] = {"maxlength"};
    ConnObject *self = Conn_CAST(op);
    PyObject *a[1];
    Py_ssize_t maxlength;

    if (nargs == 0 && kwnames == NULL) {
        a[0] = NULL;
    }
    else if (conn_parse_args("recv_bytes", args, nargs, kwnames, names, 1, 0, a) < 0) {
        return NULL;
    }
    if (conn_ssize_arg(a[0], -1, &maxlength) < 0)
        return NULL;
    if (a[0] != NULL && a[0] != Py_None && maxlength < 0) {
        PyErr_SetString(PyExc_ValueError, "negative maxlength");
        return NULL;
    }
    if (conn_check_readable(self) < 0)
        return NULL;
    char small[SMALL_FRAME];
    Py_ssize_t len;
    PyObject *res = conn_recv_frame(self, maxlength, small, &len);
    if (res == Py_None)
        return PyBytes_FromStringAndSize(small, len);
    return res;
}

PyDoc_STRVAR(conn_recv__doc__,
"recv($self, /)\n--\n\n"
"Receive an object sent with send(), blocking until it arrives.");

static PyObject *
conn_recv(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ConnObject *self = Conn_CAST(op);
    if (conn_check_readable(self) < 0)
        return NULL;
    char small[SMALL_FRAME];
    Py_ssize_t len;
    PyObject *res = conn_recv_frame(self, -1, small, &len);
    if (res == NULL)
        return NULL;
    mp_state *st = mp_get_state_by_type(Py_TYPE(op));
    if (st == NULL) {
        if (res != Py_None)
            Py_DECREF(res);
        return NULL;
    }
    if (res == Py_None)
        return mp_pickle_loads(st, small, (size_t)len, NULL);
    PyObject *obj = mp_pickle_loads(st, PyBytes_AS_STRING(res),
                                    (size_t)PyBytes_GET_SIZE(res), res);
    Py_DECREF(res);
    return obj;
}

PyDoc_STRVAR(conn_recv_bytes_into__doc__,
"recv_bytes_into($self, buf, offset=0)\n--\n\n"
"Receive one message into the writable buffer `buf`, starting `offset`\n"
"bytes in, and return its length in bytes.  If it does not fit, raise\n"
"BufferTooShort with the whole message as args[0].");

static PyObject *
conn_recv_bytes_into(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
                     PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset"};
    ConnObject *self = Conn_CAST(op);
    PyObject *a[2];
    Py_ssize_t offset;
    Py_buffer view;
    uint64_t size;
    PyObject *res = NULL;

    if (conn_parse_args("recv_bytes_into", args, nargs, kwnames, names, 2, 1, a) < 0)
        return NULL;
    if (conn_check_readable(self) < 0)
        return NULL;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (conn_ssize_arg(a[1], 0, &offset) < 0)
        goto done;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "negative offset");
        goto done;
    }
    if (offset > view.len) {
        PyErr_SetString(PyExc_ValueError, "offset too large");
        goto done;
    }
    int r = conn_read_header(self, &size);
    if (r < 0)
        goto done;
    if (r == 0) {
        PyErr_SetNone(PyExc_EOFError);
        goto done;
    }
    if (size > (uint64_t)(view.len - offset)) {
        /* Take the message off the stream anyway, and hand it over. */
        PyObject *msg = conn_read_payload(self, size);
        if (msg != NULL) {
            conn_buffer_too_short(msg);
            Py_DECREF(msg);
        }
        goto done;
    }
    Py_ssize_t n = conn_read_full(self->fd, (char *)view.buf + offset, (size_t)size);
    if (n < 0)
        goto done;
    if ((uint64_t)n < size) {
        conn_truncated((uint64_t)n, size);
        goto done;
    }
    res = PyLong_FromSsize_t(n);
done:
    PyBuffer_Release(&view);
    return res;
}

PyDoc_STRVAR(conn_poll__doc__,
"poll($self, timeout=0.0)\n--\n\n"
"Return whether there is data to read, waiting up to `timeout` seconds\n"
"(None: forever).  End of file counts as readable.");

static PyObject *
conn_poll(PyObject *op, PyObject *const *args, Py_ssize_t nargs,
          PyObject *kwnames)
{
    static const char *const names[] = {"timeout"};
    ConnObject *self = Conn_CAST(op);
    PyObject *a[1];
    int64_t deadline = 0;
    int r, err;

    if (conn_parse_args("poll", args, nargs, kwnames, names, 1, 0, a) < 0)
        return NULL;
    if (conn_check_readable(self) < 0)
        return NULL;
    if (a[0] != NULL && mp_deadline_from_timeout(a[0], &deadline) < 0)
        return NULL;
    struct pollfd pfd = {.fd = self->fd, .events = POLLIN, .revents = 0};
    for (;;) {
        /* A zero timeout asks without blocking: keep the GIL. */
        int ms = a[0] == NULL ? 0 : mp_deadline_remaining_ms(deadline);
        if (ms == 0) {
            r = poll(&pfd, 1, 0);  /* cpylint-ignore: never blocks */
            err = errno;
        }
        else {
            Py_BEGIN_ALLOW_THREADS
            r = poll(&pfd, 1, ms);
            err = errno;
            Py_END_ALLOW_THREADS
        }
        if (r >= 0 || err != EINTR)
            break;
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
    if (r < 0)
        return mp_set_oserror(err);
    if (r > 0 && (pfd.revents & POLLNVAL))
        return mp_set_oserror(EBADF);
    return PyBool_FromLong(r > 0);
}

PyDoc_STRVAR(conn_fileno__doc__,
"fileno($self)\n--\n\n"
"Return the file descriptor of the connection.");

static PyObject *
conn_fileno(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ConnObject *self = Conn_CAST(op);
    if (self->fd < 0) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    return PyLong_FromLong(self->fd);
}

PyDoc_STRVAR(conn_close__doc__,
"close($self)\n--\n\n"
"Close the connection; closing it again does nothing.");

static PyObject *
conn_close(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    conn_close_fd(Conn_CAST(op));
    Py_RETURN_NONE;
}

static PyObject *
conn_get_closed(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(Conn_CAST(op)->fd < 0);
}

static PyObject *
conn_get_readable(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(Conn_CAST(op)->readable);
}

static PyObject *
conn_get_writable(PyObject *op, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(Conn_CAST(op)->writable);
}

/* `_handle` is the stdlib's name for the fd (None once closed).  Code
 * that wants to stop a Connection from closing its fd sets it to None. */
static PyObject *
conn_get_handle(PyObject *op, void *Py_UNUSED(closure))
{
    ConnObject *self = Conn_CAST(op);
    if (self->fd < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->fd);
}

static int
conn_set_handle(PyObject *op, PyObject *value, void *Py_UNUSED(closure))
{
    ConnObject *self = Conn_CAST(op);
    if (value == NULL || value == Py_None) {
        self->fd = -1;      /* forget it without closing */
        return 0;
    }
    long fd = PyLong_AsLong(value);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "invalid handle");
        return -1;
    }
    self->fd = (int)fd;
    self->is_socket = conn_fd_is_socket((int)fd);
    return 0;
}

/* The stdlib's private checks, which some code calls: each raises
 * OSError if the connection lacks what its name says. */
static PyObject *
conn_check_closed_meth(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (Conn_CAST(op)->fd < 0) {
        PyErr_SetString(PyExc_OSError, "handle is closed");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
conn_check_readable_meth(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (!Conn_CAST(op)->readable) {
        PyErr_SetString(PyExc_OSError, "connection is write-only");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
conn_check_writable_meth(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    if (!Conn_CAST(op)->writable) {
        PyErr_SetString(PyExc_OSError, "connection is read-only");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef conn_methods[] = {
    {"send_bytes", (PyCFunction)(void (*)(void))conn_send_bytes,
     METH_FASTCALL | METH_KEYWORDS, conn_send_bytes__doc__},
    {"recv_bytes", (PyCFunction)(void (*)(void))conn_recv_bytes,
     METH_FASTCALL | METH_KEYWORDS, conn_recv_bytes__doc__},
    {"send", conn_send, METH_O, conn_send__doc__},
    {"recv", conn_recv, METH_NOARGS, conn_recv__doc__},
    {"recv_bytes_into", (PyCFunction)(void (*)(void))conn_recv_bytes_into,
     METH_FASTCALL | METH_KEYWORDS, conn_recv_bytes_into__doc__},
    {"poll", (PyCFunction)(void (*)(void))conn_poll,
     METH_FASTCALL | METH_KEYWORDS, conn_poll__doc__},
    {"fileno", conn_fileno, METH_NOARGS, conn_fileno__doc__},
    {"close", conn_close, METH_NOARGS, conn_close__doc__},
    {"_check_closed", conn_check_closed_meth, METH_NOARGS, NULL},
    {"_check_readable", conn_check_readable_meth, METH_NOARGS, NULL},
    {"_check_writable", conn_check_writable_meth, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef conn_getset[] = {
    {"closed", conn_get_closed, NULL, "True once the connection is closed.", NULL},
    {"readable", conn_get_readable, NULL, "True if the connection can receive.", NULL},
    {"writable", conn_get_writable, NULL, "True if the connection can send.", NULL},
    {"_handle", conn_get_handle, conn_set_handle,
     "The file descriptor, or None once closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(conn__doc__,
"Connection(handle, readable=True, writable=True)\n--\n\n"
"Messages over the file descriptor `handle` (a pipe end or a stream\n"
"socket), which the Connection owns and closes.");

static PyType_Slot conn_slots[] = {
    {Py_tp_doc, (void *)conn__doc__},
    {Py_tp_new, conn_new},
    {Py_tp_dealloc, conn_dealloc},
    {Py_tp_traverse, conn_traverse},
    {Py_tp_methods, conn_methods},
    {Py_tp_getset, conn_getset},
    {0, NULL},
};

static PyType_Spec conn_spec = {
    .name = "multiprocessing_c._mpcore.Connection",
    .basicsize = sizeof(ConnObject),
    .flags = (Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC |
              Py_TPFLAGS_IMMUTABLETYPE),
    .slots = conn_slots,
};

int
mp_connection_init(PyObject *module, mp_state *st)
{
    st->ConnectionType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &conn_spec, NULL);
    if (st->ConnectionType == NULL)
        return -1;
    Py_INCREF(st->ConnectionType);
    if (PyModule_AddObject(module, "Connection", (PyObject *)st->ConnectionType) < 0) {
        Py_DECREF(st->ConnectionType);
        return -1;
    }
    return 0;
}
