"""What every synthetic device spec shares."""

from __future__ import annotations


class NamedDevice:
    """Mixin for device specs whose ``name`` reads ``"<Manufacturer> <model>"``.

    DICOM headers carry the two parts separately (Manufacturer, ManufacturerModelName).
    """

    name: str

    @property
    def manufacturer(self) -> str:
        return self.name.split(" ", 1)[0]

    @property
    def model(self) -> str:
        return self.name.split(" ", 1)[1]
