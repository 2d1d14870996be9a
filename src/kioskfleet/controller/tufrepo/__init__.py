"""The controller's TUF repository (python-tuf's Metadata API): files on disk, served by the
controller's HTTP under ``/tuf/``; online keys re-sign snapshot and timestamp on a timer."""

from kioskfleet.controller.tufrepo.repository import (
    Lifetimes,
    OnlineKeys,
    RepositoryRefused,
    TufRepository,
)

__all__ = ["Lifetimes", "OnlineKeys", "RepositoryRefused", "TufRepository"]
