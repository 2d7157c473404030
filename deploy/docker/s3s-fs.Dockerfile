# s3s-fs 0.14.1: a small S3-compatible server (buckets are directories under /data), for the
# compose demo and for tests. Not a production object store.
#
# Built by scripts/build-image.sh from the same staging directory as the shardmerge image:
#   s3s-fs                   static binary (cargo install s3s-fs@0.14.1 --features binary, +crt-static)
#   ca-certificates.crt, nsswitch.conf, empty/   as for the shardmerge image
FROM scratch

COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY nsswitch.conf /etc/nsswitch.conf
COPY --chown=65532:65532 empty/ /data/
COPY --chown=65532:65532 empty/ /tmp/
COPY s3s-fs /s3s-fs

USER 65532:65532
EXPOSE 9000
VOLUME ["/data"]
ENTRYPOINT ["/s3s-fs"]
CMD ["--host", "0.0.0.0", "--port", "9000", "/data"]
