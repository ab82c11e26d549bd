/* The shared heap behind sharedctypes: arenas and the allocator in them.
 *
 * An Arena is one MAP_SHARED mapping of an anonymous file (memfd_create,
 * or an unlinked file in /dev/shm where memfd is missing).  Being shared,
 * it survives fork(); its fd can be passed to a spawned child, which maps
 * it again with Arena(size, fd).
 *
 * A Heap owns the arenas this process allocates from.  Heap.malloc(size)
 * returns a Block: a buffer over a slice of an arena that stays allocated
 * exactly as long as the Block object lives (memoryviews and ctypes
 * objects made from it keep it alive), so freeing is done by the Block's
 * dealloc, in C, with no lock to take from a GC callback.
 *
 * Allocator.  Every block is a node in its arena's address-ordered list,
 * and each node owns the free gap that follows it (the arena's embedded
 * head node owns the gap at offset 0).  Freeing a block just merges its
 * extent and its gap into the previous node's gap, so coalescing is O(1).
 * Gaps are indexed in power-of-two size bins (a bitmap finds the first
 * non-empty bin), which makes malloc O(1) apart from a bounded scan of the
 * request's own bin.  All allocator state is private memory touched only
 * with the GIL held, never the shared pages themselves.
 */
#include "mpcore.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "structmember.h"

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION   /* 3.10+; 3.9: tp_new = NULL */
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0
#define MP_CLEAR_TP_NEW 1
#endif

#define HEAP_ALIGN 16
#define NBINS 64
/* Nodes looked at in the request's own bin before taking a bigger gap. */
#define BIN_SCAN_LIMIT 32
/* Blocks bigger than this are zeroed with the GIL released. */
#define BIG_MEMSET (1 << 20)
#define MIN_ARENA_SIZE (256 * 1024)
#define MAX_GROW_ARENA_SIZE (16 * 1024 * 1024)
/* Wholly free arenas kept for reuse, in bytes (Heap default). */
#define DEFAULT_RETAIN (64 * 1024 * 1024)

typedef struct mp_node {
    struct mp_node *prev, *next;    /* address order in the arena */
    struct mp_node *bprev, *bnext;  /* the bin holding this node's gap */
    Py_ssize_t start, stop;         /* the allocation, [start, stop) */
    Py_ssize_t gap;                 /* free bytes from stop on */
    int bin;                        /* -1 when gap == 0 */
} mp_node;

typedef struct HeapObject HeapObject;

typedef struct {
    PyObject_HEAD
    char *base;
    Py_ssize_t size;
    int fd;
    /* Borrowed: set while the arena is in that heap's list. */
    HeapObject *heap;
    int allocatable;                /* created by a Heap in this process */
    Py_ssize_t nblocks;             /* live blocks allocated in it */
    Py_ssize_t hwm;                 /* bytes past this were never handed out */
    mp_node head;
    mp_node *bins[NBINS];
    uint64_t binmap;
    PyObject *weakreflist;
} ArenaObject;

typedef struct {
    PyObject_HEAD
    ArenaObject *arena;             /* strong */
    Py_ssize_t size;                /* bytes exported by the buffer */
    int linked;                     /* node is in arena's lists */
    mp_node node;
} BlockObject;

struct HeapObject {
    PyObject_HEAD
    ArenaObject **arenas;           /* strong references */
    Py_ssize_t narenas, cap;
    pid_t pid;
    Py_ssize_t discard_threshold;   /* _DISCARD_FREE_SPACE_LARGER_THAN */
    Py_ssize_t retained;            /* bytes in wholly free arenas kept */
    Py_ssize_t next_arena_size;
    Py_ssize_t n_mallocs, n_frees;
};

#define Arena_CAST(op) ((ArenaObject *)(op))
#define Block_CAST(op) ((BlockObject *)(op))
#define Heap_CAST(op) ((HeapObject *)(op))

static Py_ssize_t
page_size(void)
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (Py_ssize_t)p : 4096;
}

/* ------------------------------------------------------------------ */
/* Gap bins                                                             */
/* ------------------------------------------------------------------ */

/* The bin of a gap of n > 0 bytes: floor(log2(n)). */
static int
bin_of(Py_ssize_t n)
{
    return 63 - __builtin_clzll((unsigned long long)n);
}

/* Puts n's gap (if any) at the head of its bin. */
static void
gap_link(ArenaObject *a, mp_node *n)
{
    if (n->gap <= 0) {
        n->bin = -1;
        return;
    }
    int b = bin_of(n->gap);
    n->bin = b;
    n->bprev = NULL;
    n->bnext = a->bins[b];
    if (n->bnext)
        n->bnext->bprev = n;
    a->bins[b] = n;
    a->binmap |= (uint64_t)1 << b;
}

/* Takes n's gap out of its bin; a no-op for a node without a gap. */
static void
gap_unlink(ArenaObject *a, mp_node *n)
{
    if (n->bin < 0)
        return;
    if (n->bprev)
        n->bprev->bnext = n->bnext;
    else
        a->bins[n->bin] = n->bnext;
    if (n->bnext)
        n->bnext->bprev = n->bprev;
    if (a->bins[n->bin] == NULL)
        a->binmap &= ~((uint64_t)1 << n->bin);
    n->bin = -1;
    n->bprev = n->bnext = NULL;
}

/* The node whose gap can hold `need` bytes, or NULL. */
static mp_node *
gap_find(ArenaObject *a, Py_ssize_t need)
{
    int b = bin_of(need);
    mp_node *n = a->bins[b];
    for (int i = 0; n != NULL && i < BIN_SCAN_LIMIT; i++, n = n->bnext)
        if (n->gap >= need)
            return n;
    uint64_t bigger = b < 63 ? a->binmap & (~(uint64_t)0 << (b + 1)) : 0;
    if (bigger)
        return a->bins[__builtin_ctzll(bigger)];
    /* Only this bin is left: finish the scan. */
    for (; n != NULL; n = n->bnext)
        if (n->gap >= need)
            return n;
    return NULL;
}

/* Makes the whole arena one free gap owned by the head node. */
static void
arena_reset_allocator(ArenaObject *a)
{
    memset(&a->head, 0, sizeof(a->head));
    memset(a->bins, 0, sizeof(a->bins));
    a->binmap = 0;
    a->nblocks = 0;
    a->head.gap = a->size;
    a->head.bin = -1;
    gap_link(a, &a->head);
}

/* Carves `need` bytes (a multiple of HEAP_ALIGN) out of the gap after
 * `p` for block `blk`.  Returns the number of bytes at the start of the
 * block that may be dirty and need zeroing. */
static Py_ssize_t
arena_carve(ArenaObject *a, mp_node *p, BlockObject *blk, Py_ssize_t need)
{
    mp_node *n = &blk->node;
    gap_unlink(a, p);
    n->start = p->stop;
    n->stop = n->start + need;
    n->gap = p->gap - need;
    n->bin = -1;
    p->gap = 0;
    n->prev = p;
    n->next = p->next;
    if (p->next)
        p->next->prev = n;
    p->next = n;
    gap_link(a, n);
    blk->linked = 1;
    a->nblocks++;
    Py_ssize_t dirty = 0;
    if (n->start < a->hwm)
        dirty = (n->stop < a->hwm ? n->stop : a->hwm) - n->start;
    if (n->stop > a->hwm)
        a->hwm = n->stop;
    return dirty;
}

/* Returns the block's extent and its gap to the node before it. */
static void
arena_release(ArenaObject *a, BlockObject *blk)
{
    mp_node *n = &blk->node, *p = n->prev;
    gap_unlink(a, p);
    gap_unlink(a, n);
    p->gap += (n->stop - n->start) + n->gap;
    p->next = n->next;
    if (n->next)
        n->next->prev = p;
    gap_link(a, p);
    blk->linked = 0;
    a->nblocks--;
}

/* ------------------------------------------------------------------ */
/* Arena                                                                */
/* ------------------------------------------------------------------ */

/* An anonymous shared file of `size` bytes.  Returns the fd, or -1 with
 * errno set. */
static int
arena_make_file(Py_ssize_t size)
{
    int fd = -1;
#ifdef MFD_CLOEXEC
    fd = memfd_create("mpc-arena", MFD_CLOEXEC);
    if (fd < 0 && errno != ENOSYS && errno != EINVAL)
        return -1;
#endif
    if (fd < 0) {
        /* No memfd: an unlinked file in /dev/shm is just as private. */
        char path[] = "/dev/shm/mpc-arena-XXXXXX";
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0)
            return -1;
        unlink(path);
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* Maps `size` bytes of `fd` into a new Arena, which takes the fd over
 * (closing it on failure too).  Returns a new reference or NULL. */
static ArenaObject *
arena_from_fd(PyTypeObject *tp, int fd, Py_ssize_t size)
{
    void *base = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED,
                      fd, 0);
    if (base == MAP_FAILED) {
        int err = errno;
        close(fd);
        return (ArenaObject *)mp_set_oserror(err);
    }
    ArenaObject *a = (ArenaObject *)tp->tp_alloc(tp, 0);
    if (a == NULL) {
        munmap(base, (size_t)size);
        close(fd);
        return NULL;
    }
    a->base = base;
    a->size = size;
    a->fd = fd;
    a->heap = NULL;
    a->allocatable = 0;
    a->hwm = 0;
    a->weakreflist = NULL;
    arena_reset_allocator(a);
    return a;
}

/* A fresh, zero-filled arena.  Returns a new reference or NULL. */
static ArenaObject *
arena_create(PyTypeObject *tp, Py_ssize_t size)
{
    /* A memfd has no size limit and its pages come on first touch, so a
     * nonsense size would "succeed" and fail later at random: refuse what
     * the machine cannot hold. */
    long pages = sysconf(_SC_PHYS_PAGES);
    if (pages > 0 && (double)size > (double)pages * (double)page_size()) {
        PyErr_Format(PyExc_MemoryError,
                     "cannot allocate a shared arena of %zd bytes: more than "
                     "the machine's memory", size);
        return NULL;
    }
    int fd = arena_make_file(size);
    if (fd < 0)
        return (ArenaObject *)mp_set_oserror(errno);
    return arena_from_fd(tp, fd, size);
}

/* Arena(size, fd=-1): a new arena, or a mapping of `fd` (taken over once
 * the arguments are valid).  Returns a new reference or NULL. */
static PyObject *
arena_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "fd", NULL};
    Py_ssize_t size;
    int fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|i:Arena", kwlist, &size, &fd))
        return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "arena size must be positive");
        return NULL;
    }
    if (fd == -1)
        return (PyObject *)arena_create(tp, size);
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "bad file descriptor: %d", fd);
        return NULL;
    }
    struct stat stt;
    if (fstat(fd, &stt) < 0)
        return mp_set_oserror(errno);
    if (stt.st_size < size) {
        PyErr_Format(PyExc_ValueError,
                     "fd %d holds %lld bytes, less than the arena size %zd",
                     fd, (long long)stt.st_size, size);
        return NULL;
    }
    return (PyObject *)arena_from_fd(tp, fd, size);
}

/* Only runs once no Block or exported buffer refers to the arena. */
static void
arena_dealloc(PyObject *op)
{
    ArenaObject *a = Arena_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    if (a->weakreflist != NULL)
        PyObject_ClearWeakRefs(op);
    if (a->base != NULL)
        munmap(a->base, (size_t)a->size);
    if (a->fd >= 0)
        close(a->fd);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static int
arena_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    ArenaObject *a = Arena_CAST(op);
    return PyBuffer_FillInfo(view, op, a->base, a->size, 0, flags);
}

/* A new list of (start, stop) tuples: the blocks (used) or the gaps. */
static PyObject *
list_of_extents(ArenaObject *a, int used)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (mp_node *n = &a->head; n != NULL; n = n->next) {
        PyObject *t = NULL;
        if (used && n != &a->head)
            t = Py_BuildValue("(nn)", n->start, n->stop);
        else if (!used && n->gap > 0)
            t = Py_BuildValue("(nn)", n->stop, n->stop + n->gap);
        else
            continue;
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(t);
    }
    return list;
}

PyDoc_STRVAR(arena_used_blocks__doc__,
"_used_blocks($self, /)\n--\n\n"
"The (start, stop) extents of blocks allocated in this arena, in address\n"
"order (empty for an arena attached from a file descriptor).");

static PyObject *
arena_used_blocks(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    return list_of_extents(Arena_CAST(op), 1);
}

PyDoc_STRVAR(arena_free_blocks__doc__,
"_free_blocks($self, /)\n--\n\n"
"The (start, stop) extents of free space in this arena, in address order.");

static PyObject *
arena_free_blocks(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    ArenaObject *a = Arena_CAST(op);
    if (!a->allocatable)
        return PyList_New(0);
    return list_of_extents(a, 0);
}

PyDoc_STRVAR(arena_block__doc__,
"_block($self, start, size, /)\n--\n\n"
"A Block exporting `size` bytes of this arena from `start`, outside the\n"
"allocator: used to rebuild a block passed to a spawned child.");

static PyObject *
arena_block(PyObject *op, PyObject *args)
{
    ArenaObject *a = Arena_CAST(op);
    Py_ssize_t start, size;
    if (!PyArg_ParseTuple(args, "nn:_block", &start, &size))
        return NULL;
    if (start < 0 || size < 0 || start > a->size || size > a->size - start) {
        PyErr_Format(PyExc_ValueError,
                     "block [%zd, %zd+%zd) is outside the arena of %zd bytes",
                     start, start, size, a->size);
        return NULL;
    }
    mp_state *st = mp_get_state_by_type(Py_TYPE(op));
    if (st == NULL)
        return NULL;
    BlockObject *b = (BlockObject *)st->BlockType->tp_alloc(st->BlockType, 0);
    if (b == NULL)
        return NULL;
    Py_INCREF(a);
    b->arena = a;
    b->size = size;
    b->linked = 0;
    b->node.start = start;
    b->node.stop = start + size;
    b->node.bin = -1;
    return (PyObject *)b;
}

static PyObject *
arena_repr(PyObject *op)
{
    ArenaObject *a = Arena_CAST(op);
    return PyUnicode_FromFormat("<%s size=%zd fd=%d blocks=%zd>",
                                Py_TYPE(op)->tp_name, a->size, a->fd,
                                a->nblocks);
}

static PyMethodDef arena_methods[] = {
    {"_used_blocks", arena_used_blocks, METH_NOARGS, arena_used_blocks__doc__},
    {"_free_blocks", arena_free_blocks, METH_NOARGS, arena_free_blocks__doc__},
    {"_block", arena_block, METH_VARARGS, arena_block__doc__},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef arena_members[] = {
    {"size", T_PYSSIZET, offsetof(ArenaObject, size), READONLY,
     "Size of the mapping in bytes."},
    {"fd", T_INT, offsetof(ArenaObject, fd), READONLY,
     "The file descriptor of the shared file (owned by the arena)."},
    {"_nblocks", T_PYSSIZET, offsetof(ArenaObject, nblocks), READONLY,
     "Number of live blocks allocated in the arena."},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(ArenaObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(arena__doc__,
"Arena(size, fd=-1)\n--\n\n"
"A shared mapping of `size` bytes.  With no fd a new anonymous shared\n"
"file is made (memfd, or an unlinked file in /dev/shm); with an fd that\n"
"file is mapped and the arena takes ownership of the fd.  Supports the\n"
"buffer protocol and survives fork().");

static PyType_Slot arena_slots[] = {
    {Py_tp_new, arena_new},
    {Py_tp_dealloc, arena_dealloc},
    {Py_tp_repr, arena_repr},
    {Py_tp_methods, arena_methods},
    {Py_tp_members, arena_members},
    {Py_tp_doc, (void *)arena__doc__},
    {Py_bf_getbuffer, arena_getbuffer},
    {0, NULL},
};

static PyType_Spec arena_spec = {
    .name = "multiprocessing_c._mpcore.Arena",
    .basicsize = sizeof(ArenaObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = arena_slots,
};

/* ------------------------------------------------------------------ */
/* Block                                                                */
/* ------------------------------------------------------------------ */

static void heap_arena_emptied(HeapObject *h, ArenaObject *a);

/* Frees the block's space: this is the only place blocks are freed.  May
 * unmap the arena (through heap_arena_emptied) but runs no Python code. */
static void
block_dealloc(PyObject *op)
{
    BlockObject *b = Block_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    ArenaObject *a = b->arena;
    if (a != NULL && b->linked) {
        arena_release(a, b);
        if (a->heap != NULL) {
            a->heap->n_frees++;
            if (a->nblocks == 0)
                heap_arena_emptied(a->heap, a);
        }
    }
    tp->tp_free(op);
    Py_XDECREF(a);
    Py_DECREF(tp);
}

/* The exported buffer keeps the Block (so its space) alive. */
static int
block_getbuffer(PyObject *op, Py_buffer *view, int flags)
{
    BlockObject *b = Block_CAST(op);
    return PyBuffer_FillInfo(view, op, b->arena->base + b->node.start,
                             b->size, 0, flags);
}

static PyObject *
block_get_arena(PyObject *op, void *Py_UNUSED(closure))
{
    PyObject *a = (PyObject *)Block_CAST(op)->arena;
    Py_INCREF(a);
    return a;
}

static PyObject *
block_get_start(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(Block_CAST(op)->node.start);
}

static PyObject *
block_get_stop(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(Block_CAST(op)->node.stop);
}

static PyObject *
block_get_size(PyObject *op, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(Block_CAST(op)->size);
}

static PyObject *
block_get_address(PyObject *op, void *Py_UNUSED(closure))
{
    BlockObject *b = Block_CAST(op);
    return PyLong_FromVoidPtr(b->arena->base + b->node.start);
}

static Py_ssize_t
block_length(PyObject *op)
{
    return Block_CAST(op)->size;
}

static PyObject *
block_repr(PyObject *op)
{
    BlockObject *b = Block_CAST(op);
    return PyUnicode_FromFormat("<%s [%zd, %zd) size=%zd of arena fd=%d>",
                                Py_TYPE(op)->tp_name, b->node.start,
                                b->node.stop, b->size, b->arena->fd);
}

static PyGetSetDef block_getset[] = {
    {"arena", block_get_arena, NULL, "The Arena the block lives in.", NULL},
    {"start", block_get_start, NULL, "Offset of the block in its arena.", NULL},
    {"stop", block_get_stop, NULL,
     "End offset of the allocation (size rounded up to the alignment).", NULL},
    {"size", block_get_size, NULL, "Bytes the buffer exports.", NULL},
    {"address", block_get_address, NULL,
     "Address of the block's first byte in this process.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(block__doc__,
"A slice of an Arena returned by Heap.malloc().  Exports its bytes with\n"
"the buffer protocol; the space is freed when the Block is collected.");

static PyType_Slot block_slots[] = {
    {Py_tp_dealloc, block_dealloc},
    {Py_tp_repr, block_repr},
    {Py_tp_getset, block_getset},
    {Py_tp_doc, (void *)block__doc__},
    {Py_sq_length, block_length},
    {Py_bf_getbuffer, block_getbuffer},
    {0, NULL},
};

static PyType_Spec block_spec = {
    .name = "multiprocessing_c._mpcore.Block",
    .basicsize = sizeof(BlockObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = block_slots,
};

/* ------------------------------------------------------------------ */
/* Heap                                                                 */
/* ------------------------------------------------------------------ */

/* Removes arena i from the heap's list and drops the heap's reference. */
static void
heap_drop_arena(HeapObject *h, Py_ssize_t i)
{
    ArenaObject *a = h->arenas[i];
    if (a->nblocks == 0)
        h->retained -= a->size;
    memmove(&h->arenas[i], &h->arenas[i + 1],
            (size_t)(h->narenas - i - 1) * sizeof(ArenaObject *));
    h->narenas--;
    a->heap = NULL;
    a->allocatable = 0;
    Py_DECREF(a);
}

/* Called when the last block of `a` is freed: keep the arena for reuse
 * while the retained free arenas fit the threshold, else unmap it. */
static void
heap_arena_emptied(HeapObject *h, ArenaObject *a)
{
    if (h->pid != getpid())
        return;     /* a forked child: the next malloc forgets these */
    if (h->retained + a->size <= h->discard_threshold) {
        h->retained += a->size;
        return;
    }
    for (Py_ssize_t i = 0; i < h->narenas; i++) {
        if (h->arenas[i] == a) {
            h->retained += a->size;     /* heap_drop_arena subtracts it */
            heap_drop_arena(h, i);
            return;
        }
    }
}

/* Drops every arena; blocks still alive keep theirs mapped. */
static void
heap_forget_arenas(HeapObject *h)
{
    while (h->narenas > 0)
        heap_drop_arena(h, h->narenas - 1);
    h->retained = 0;
}

static PyObject *
heap_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    HeapObject *h = (HeapObject *)tp->tp_alloc(tp, 0);
    if (h == NULL)
        return NULL;
    h->pid = getpid();
    h->discard_threshold = DEFAULT_RETAIN;
    h->next_arena_size = MIN_ARENA_SIZE;
    return (PyObject *)h;
}

static int
heap_traverse(PyObject *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    return 0;
}

static void
heap_dealloc(PyObject *op)
{
    HeapObject *h = Heap_CAST(op);
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    heap_forget_arenas(h);
    PyMem_Free(h->arenas);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/* Adds `a` to the heap, stealing the reference.  Returns 0, or -1 with
 * MemoryError set (the reference is then still the caller's). */
static int
heap_append_arena(HeapObject *h, ArenaObject *a)
{
    if (h->narenas == h->cap) {
        Py_ssize_t cap = h->cap ? h->cap * 2 : 8;
        ArenaObject **arr = PyMem_Realloc(h->arenas, (size_t)cap * sizeof(*arr));
        if (arr == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        h->arenas = arr;
        h->cap = cap;
    }
    h->arenas[h->narenas++] = a;     /* steals the reference */
    a->heap = h;
    a->allocatable = 1;
    return 0;
}

/* Finds room for `need` bytes: first in arenas that are in use, then in
 * the smallest wholly free arena that fits, else in a new arena.  Returns
 * a borrowed arena and sets *where to the node whose gap to carve, or
 * returns NULL with an exception set. */
static ArenaObject *
heap_find_arena(HeapObject *h, Py_ssize_t need, mp_node **where)
{
    ArenaObject *best = NULL;
    for (Py_ssize_t i = 0; i < h->narenas; i++) {
        ArenaObject *a = h->arenas[i];
        if (a->nblocks == 0) {
            if (a->size >= need && (best == NULL || a->size < best->size))
                best = a;
            continue;
        }
        mp_node *n = gap_find(a, need);
        if (n != NULL) {
            *where = n;
            return a;
        }
    }
    if (best != NULL) {
        h->retained -= best->size;
        *where = &best->head;
        return best;
    }
    PyTypeObject *atp = NULL;
    mp_state *st = mp_get_state_by_type(Py_TYPE(h));
    if (st == NULL)
        return NULL;
    atp = st->ArenaType;
    Py_ssize_t pg = page_size();
    Py_ssize_t size = h->next_arena_size;
    if (need > size)
        size = (need + pg - 1) / pg * pg;
    else if (h->next_arena_size < MAX_GROW_ARENA_SIZE)
        h->next_arena_size *= 2;
    ArenaObject *a = arena_create(atp, size);
    if (a == NULL)
        return NULL;
    if (heap_append_arena(h, a) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    *where = &a->head;
    return a;
}

PyDoc_STRVAR(heap_malloc__doc__,
"malloc($self, size, /)\n--\n\n"
"Allocate `size` zero-filled bytes of shared memory.  Returns a Block;\n"
"the space is freed when the Block (and every buffer made from it) is\n"
"collected.");

/* Returns a new Block, or NULL with ValueError/OverflowError/MemoryError
 * or OSError (from creating an arena) set. */
static PyObject *
heap_malloc(PyObject *op, PyObject *arg)
{
    HeapObject *h = Heap_CAST(op);
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_Format(PyExc_ValueError, "size %zd out of range", size);
        return NULL;
    }
    if (size > PY_SSIZE_T_MAX - 2 * page_size()) {
        PyErr_Format(PyExc_OverflowError, "size %zd is too large", size);
        return NULL;
    }
    if (h->pid != getpid()) {
        /* A forked child: the parent keeps allocating in the arenas we
         * inherited, so this process must never carve from them. */
        heap_forget_arenas(h);
        h->pid = getpid();
        h->next_arena_size = MIN_ARENA_SIZE;
    }
    Py_ssize_t need = size ? (size + HEAP_ALIGN - 1) & ~(Py_ssize_t)(HEAP_ALIGN - 1)
                           : HEAP_ALIGN;
    mp_state *st = mp_get_state_by_type(Py_TYPE(op));
    if (st == NULL)
        return NULL;
    BlockObject *b = (BlockObject *)st->BlockType->tp_alloc(st->BlockType, 0);
    if (b == NULL)
        return NULL;
    mp_node *where = NULL;
    ArenaObject *a = heap_find_arena(h, need, &where);
    if (a == NULL) {
        Py_DECREF(b);
        return NULL;
    }
    Py_INCREF(a);
    b->arena = a;
    b->size = size;
    Py_ssize_t dirty = arena_carve(a, where, b, need);
    h->n_mallocs++;
    if (dirty > 0) {
        char *p = a->base + b->node.start;
        if (dirty >= BIG_MEMSET) {
            /* The block is ours alone until we return it. */
            Py_BEGIN_ALLOW_THREADS
            memset(p, 0, (size_t)dirty);
            Py_END_ALLOW_THREADS
        }
        else {
            memset(p, 0, (size_t)dirty);
        }
    }
    return (PyObject *)b;
}

PyDoc_STRVAR(heap_arenas__doc__,
"_get_arenas($self, /)\n--\n\n"
"A list of the arenas this heap allocates from.");

static PyObject *
heap_get_arenas(PyObject *op, PyObject *Py_UNUSED(ignored))
{
    HeapObject *h = Heap_CAST(op);
    if (h->pid != getpid())
        return PyList_New(0);
    PyObject *list = PyList_New(h->narenas);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < h->narenas; i++) {
        Py_INCREF(h->arenas[i]);
        PyList_SET_ITEM(list, i, (PyObject *)h->arenas[i]);
    }
    return list;
}

static PyMethodDef heap_methods[] = {
    {"malloc", heap_malloc, METH_O, heap_malloc__doc__},
    {"_get_arenas", heap_get_arenas, METH_NOARGS, heap_arenas__doc__},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef heap_members[] = {
    {"_DISCARD_FREE_SPACE_LARGER_THAN", T_PYSSIZET,
     offsetof(HeapObject, discard_threshold), 0,
     "Wholly free arenas are kept for reuse while they total at most this\n"
     "many bytes; the rest are unmapped."},
    {"_n_mallocs", T_PYSSIZET, offsetof(HeapObject, n_mallocs), READONLY,
     "Number of blocks allocated."},
    {"_n_frees", T_PYSSIZET, offsetof(HeapObject, n_frees), READONLY,
     "Number of blocks freed."},
    {"_retained", T_PYSSIZET, offsetof(HeapObject, retained), READONLY,
     "Bytes held in wholly free arenas."},
    {NULL, 0, 0, 0, NULL},
};

PyDoc_STRVAR(heap__doc__,
"Heap()\n--\n\n"
"An allocator of shared memory blocks over a growing set of arenas.\n"
"A forked child starts afresh with arenas of its own.");

static PyType_Slot heap_slots[] = {
    {Py_tp_new, heap_new},
    {Py_tp_dealloc, heap_dealloc},
    {Py_tp_traverse, heap_traverse},
    {Py_tp_methods, heap_methods},
    {Py_tp_members, heap_members},
    {Py_tp_doc, (void *)heap__doc__},
    {0, NULL},
};

static PyType_Spec heap_spec = {
    .name = "multiprocessing_c._mpcore.Heap",
    .basicsize = sizeof(HeapObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = heap_slots,
};

int
mp_heap_init(PyObject *module, mp_state *st)
{
    st->ArenaType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &arena_spec, NULL);
    if (st->ArenaType == NULL)
        return -1;
    st->BlockType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &block_spec, NULL);
    if (st->BlockType == NULL)
        return -1;
#ifdef MP_CLEAR_TP_NEW
    /* Blocks come only from Heap.malloc() and Arena._block(). */
    st->BlockType->tp_new = NULL;
#endif
    st->HeapType = (PyTypeObject *)PyType_FromModuleAndSpec(module, &heap_spec, NULL);
    if (st->HeapType == NULL)
        return -1;
    if (PyModule_AddType(module, st->ArenaType) < 0 ||
        PyModule_AddType(module, st->BlockType) < 0 ||
        PyModule_AddType(module, st->HeapType) < 0)
        return -1;
    return 0;
}
