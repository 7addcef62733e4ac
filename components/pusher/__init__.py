"""The Pusher, made idempotent: a model already in the serving directory is not copied again."""

from components.pusher.component import Pusher
