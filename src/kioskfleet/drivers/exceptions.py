"""Driver errors, split by what the caller should do."""


class DriverError(Exception):
    """Base of every error a driver raises; nothing else escapes a driver's public methods."""


class DeviceUnavailableError(DriverError):
    """The port cannot be opened or vanished (unplugged). Retry later; state ``no_device``.

    Example scenarios: ``/dev/ttyUSB0`` missing, permission denied, USB adapter unplugged.
    """


class DeviceTimeoutError(DriverError, TimeoutError):
    """The port is open but the device did not answer in time. Retry later; state ``offline``.

    Example scenarios: device powered off, wrong baud rate, wrong ccTalk address.
    """


class FrameError(DriverError):
    """Bytes that do not form a valid frame (bad checksum, impossible length, garbage).

    Drivers skip garbage and retry; this escapes only when retries are exhausted.
    """


class DeviceOperationError(DriverError):
    """The device answered but refused or failed the operation (NAK, error status).

    Do not blindly retry: the device is there and said no.
    """


class ConfigurationError(DriverError, ValueError):
    """The driver's configuration makes no sense (a firmware profile quirk out of range).

    Fix the configuration: retrying cannot help, and the device is not to blame.
    """
