"""The package's public names: what __all__ promises is there, and nothing public is unlisted."""

import intake_tcia
from intake_tcia import errors


def test_all_matches_the_public_names():
    public = {  # dir(): names imported when first used are listed too
        name
        for name in dir(intake_tcia)
        if not name.startswith("_")
        and not isinstance(getattr(intake_tcia, name), type(intake_tcia))
    }
    assert public == set(intake_tcia.__all__) - {"__version__"}
    assert intake_tcia.__version__


def test_every_exception_derives_from_the_base():
    for name in errors.__all__:
        value = getattr(errors, name)
        base = UserWarning if issubclass(value, Warning) else errors.TCIAError
        assert issubclass(value, base), name
    assert not issubclass(errors.IDCFallbackWarning, errors.TCIAError)  # a warning, not raised
