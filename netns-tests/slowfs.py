"""A slow disk for the tests: a FUSE passthrough of ROOT at MOUNTPOINT whose writes go at RATE
bytes per second (the cache directory of a small appliance on an SD card or a USB stick).

  slowfs.py ROOT MOUNTPOINT RATE      # foreground until unmounted (fusermount3 -u MOUNTPOINT)
"""
import errno, os, sys, threading, time

try:
    from fusepy import FUSE, FuseOSError, Operations  # Debian's python3-fusepy
except ImportError:
    from fuse import FUSE, FuseOSError, Operations


class SlowPassthrough(Operations):
    def __init__(self, root, rate):
        self.root = root
        self.rate = rate
        self._mu = threading.Lock()
        self.free_at = time.monotonic()  # when the "disk" is done with what it was given

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._p(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        keys = ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._p(path), mode)

    def mknod(self, path, mode, dev):  # ftpgate's status socket lives in the cache dir
        return os.mknod(self._p(path), mode, dev)

    def rmdir(self, path):
        return os.rmdir(self._p(path))

    def unlink(self, path):
        return os.unlink(self._p(path))

    def rename(self, old, new):
        return os.rename(self._p(old), self._p(new))

    def utimens(self, path, times=None):
        return os.utime(self._p(path), times)

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def open(self, path, flags):
        return os.open(self._p(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        with self._mu:
            now = time.monotonic()
            self.free_at = max(self.free_at, now) + len(data) / self.rate
            wait = self.free_at - now
        if wait > 0:
            time.sleep(wait)
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        with open(self._p(path), "r+") as f:
            f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, datasync, fh):
        return os.fsync(fh)


if __name__ == "__main__":
    root, mnt, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    FUSE(SlowPassthrough(root, rate), mnt, foreground=True, allow_other=True, nothreads=False)
