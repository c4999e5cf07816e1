"""bucket_app's counting kernel; bucket_app.counting.kernel is its one user (see there)."""

from bucket_app_kernel._kernel import Kernel, KernelError, Refused, unpack

__all__ = ["Kernel", "KernelError", "Refused", "unpack"]
