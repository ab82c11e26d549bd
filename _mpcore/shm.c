/* POSIX named shared memory: shm_open and shm_unlink.
 *
 * The names are the OS's own ("/psm_1a2b3c4d" lives at
 * /dev/shm/psm_1a2b3c4d on Linux), so segments made here and by the
 * stdlib's multiprocessing.shared_memory can attach to each other.
 */
#include "mpcore.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* Converts `path` to the bytes glibc expects.  Returns a new reference or
 * NULL; embedded NULs raise ValueError. */
static PyObject *
shm_name_bytes(PyObject *path)
{
    if (!PyUnicode_Check(path)) {
        PyErr_Format(PyExc_TypeError, "shared memory name must be str, not %.100s",
                     Py_TYPE(path)->tp_name);
        return NULL;
    }
    PyObject *b = PyUnicode_EncodeFSDefault(path);
    if (b == NULL)
        return NULL;
    if (strlen(PyBytes_AS_STRING(b)) != (size_t)PyBytes_GET_SIZE(b)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_ValueError, "embedded null character in name");
        return NULL;
    }
    return b;
}

PyDoc_STRVAR(shm_open__doc__,
"shm_open(path, flags, mode=0o777)\n--\n\n"
"Open the shared memory object `path` with os.O_* `flags` and return a\n"
"file descriptor (not inheritable).  Raises FileNotFoundError,\n"
"FileExistsError and the like as the OS reports them.");

static PyObject *
shm_shm_open(PyObject *module, PyObject *args, PyObject *kwds)
{
    (void)module;
    static char *kwlist[] = {"path", "flags", "mode", NULL};
    PyObject *path;
    int flags, mode = 0777;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Ui|i:shm_open", kwlist,
                                     &path, &flags, &mode))
        return NULL;
    PyObject *name = shm_name_bytes(path);
    if (name == NULL)
        return NULL;
    const char *cname = PyBytes_AS_STRING(name);
    int fd, err, async_err;
    MP_RETRY_EINTR(fd, shm_open(cname, flags | O_CLOEXEC, (mode_t)mode),
                   err, async_err);
    Py_DECREF(name);
    if (fd < 0) {
        if (!async_err) {
            errno = err;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        }
        return NULL;
    }
    return PyLong_FromLong(fd);
}

PyDoc_STRVAR(shm_unlink__doc__,
"shm_unlink(path)\n--\n\n"
"Remove the name of the shared memory object `path`.  The memory lives\n"
"on until every mapping of it is gone.  Raises FileNotFoundError if there\n"
"is no such object.");

static PyObject *
shm_shm_unlink(PyObject *module, PyObject *args, PyObject *kwds)
{
    (void)module;
    static char *kwlist[] = {"path", NULL};
    PyObject *path;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U:shm_unlink", kwlist, &path))
        return NULL;
    PyObject *name = shm_name_bytes(path);
    if (name == NULL)
        return NULL;
    const char *cname = PyBytes_AS_STRING(name);
    int res, err, async_err;
    MP_RETRY_EINTR(res, shm_unlink(cname), err, async_err);
    Py_DECREF(name);
    if (res < 0) {
        if (!async_err) {
            errno = err;
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
        }
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef shm_methods[] = {
    {"shm_open", (PyCFunction)(void (*)(void))shm_shm_open,
     METH_VARARGS | METH_KEYWORDS, shm_open__doc__},
    {"shm_unlink", (PyCFunction)(void (*)(void))shm_shm_unlink,
     METH_VARARGS | METH_KEYWORDS, shm_unlink__doc__},
    {NULL, NULL, 0, NULL},
};

int
mp_shm_init(PyObject *module, mp_state *st)
{
    (void)st;
    return PyModule_AddFunctions(module, shm_methods);
}
