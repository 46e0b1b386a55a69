# Run by `cmake --install` (install(CODE) in CMakeLists.txt): configures tide_in into tide_out
# with the install directories made absolute under the prefix being installed to, which here
# is `cmake --install --prefix`'s when given (DESTDIR is not part of it: the files name where
# things are once installed). In: tide_in, tide_out, tide_bindir, tide_libdir,
# tide_includedir (relative to the prefix, or absolute), tide_version.
set(prefix "${CMAKE_INSTALL_PREFIX}")
foreach(d bindir libdir includedir)
  if(IS_ABSOLUTE "${tide_${d}}")
    set(${d} "${tide_${d}}")
  else()
    set(${d} "${prefix}/${tide_${d}}")
  endif()
endforeach()
set(version "${tide_version}")
configure_file("${tide_in}" "${tide_out}" @ONLY)
