"""The shared shell of the app: the page frame (header, model picker, view tabs, help, input-image
sidebar), the URL state that every view reads, and the input images (gallery and uploads)."""
