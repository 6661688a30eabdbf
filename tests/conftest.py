import jax
import pytest

from caskax.examples.stages import mock_data


@pytest.fixture(scope="session")
def data():
    """The tutorial's mock data (5 epochs of 50x50 images), made once per session."""
    return mock_data(seed=1123)


@pytest.fixture
def key():
    return jax.random.key(0)
